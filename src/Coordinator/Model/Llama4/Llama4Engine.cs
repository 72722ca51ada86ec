using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>The outputs of <see cref="Llama4Engine.InferAsync"/> (the <c>infer --json</c> contract).</summary>
/// <param name="PromptIds">The prompt.</param>
/// <param name="LastLogits">All vocabulary logits at the last prompt position.</param>
/// <param name="Argmax">Argmax of the logits at every prompt position.</param>
/// <param name="Experts">MoE layer → per prompt token, its top-k expert ids.</param>
/// <param name="NewTokens">Greedy continuation through the KV cache (stops after an EOS token or the limit).</param>
public sealed record InferenceResult(int[] PromptIds, float[] LastLogits, int[] Argmax, IReadOnlyDictionary<int, int[][]> Experts, int[] NewTokens)
{
    /// <summary>MoE layer → per generated token fed back through the cache (all but the last), its top-k expert ids.</summary>
    public IReadOnlyDictionary<int, int[][]> FedTokenExperts { get; init; } = new Dictionary<int, int[][]>();
}

/// <summary>
/// One model ready to run: checkpoint + coordinator weights + an expert dispatcher (in-process by default). Runs a
/// prompt with chunked prefill (bounded activation memory for long prompts) and greedy decoding through the KV cache.
/// </summary>
public sealed class Llama4Engine : IDisposable
{
    private readonly CheckpointReader _checkpoint;
    private readonly Llama4Weights _weights;
    private readonly IDisposable? _ownedDispatcher;

    private Llama4Engine(CheckpointReader checkpoint, Llama4Weights weights, IKernelBackend backend, IExpertDispatcher dispatcher, IDisposable? owned)
    {
        _checkpoint = checkpoint;
        _weights = weights;
        _ownedDispatcher = owned;
        Backend = backend;
        Model = new Llama4Model(weights, backend, dispatcher);
    }

    /// <summary>The model.</summary>
    public Llama4Model Model { get; }

    /// <summary>The validated config.</summary>
    public Llama4TextConfig Config => _weights.Config;

    /// <summary>The checkpoint's fingerprint (config + tensor index).</summary>
    public string Fingerprint => _checkpoint.Fingerprint;

    /// <summary>The kernel backend.</summary>
    public IKernelBackend Backend { get; }

    /// <summary>Coordinator-side weight bytes on the backend.</summary>
    public long ResidentBytes => _weights.ResidentBytes;

    /// <summary>Most prompt tokens per prefill step (bounds activation memory). Default: 512.</summary>
    public int PrefillChunkTokens
    {
        get => _prefillChunkTokens;
        set => _prefillChunkTokens = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "must be positive");
    }

    private int _prefillChunkTokens = 512;

    /// <summary>
    /// Opens <paramref name="modelDirectory"/> and loads the coordinator weights. With no <paramref name="dispatcher"/>,
    /// routed experts run in-process (<see cref="LocalExpertDispatcher"/>, owned by the engine, loading them with
    /// <paramref name="experts"/>: as stored by default, or quantized to FP8, W8A8).
    /// </summary>
    /// <exception cref="CheckpointException">The directory is not a usable Llama 4 checkpoint, or <paramref name="experts"/>
    /// does not apply to it.</exception>
    public static Llama4Engine Load(string modelDirectory, IKernelBackend backend, IExpertDispatcher? dispatcher = null, ExpertLoadOptions? experts = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var checkpoint = CheckpointReader.Open(modelDirectory);
        try
        {
            var weights = Llama4Weights.Load(checkpoint, backend);
            LocalExpertDispatcher? local = dispatcher is null ? new LocalExpertDispatcher(checkpoint, backend, experts) : null;
            return new Llama4Engine(checkpoint, weights, backend, dispatcher ?? local!, local);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>Creates an empty KV cache for one sequence.</summary>
    public Llama4KvCache CreateCache() => new(Config);

    /// <summary>
    /// Element type of the request KV caches of <see cref="InferAsync"/> (<c>--kv-dtype</c>); null = the backend's
    /// default (<see cref="KvCacheDTypes.DefaultFor"/>: bf16 on CUDA, fp32 on the CPU). Default: null.
    /// </summary>
    public KvCacheDType? KvDType { get; set; }

    /// <summary>
    /// The KV cache for one request of at most <paramref name="totalTokens"/> positions: on a backend that keeps KV blocks
    /// in its own memory (CUDA: device memory, so attention never moves the context), or with a KV element type other
    /// than fp32, a paged cache over a pool sized for this request alone; otherwise <see cref="CreateCache"/>. Dispose it
    /// after the request.
    /// </summary>
    public IKvCache CreateRequestCache(int totalTokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalTokens);
        var dtype = KvDType ?? KvCacheDTypes.DefaultFor(Backend);
        if (Backend is not IKvBlockStoreFactory && dtype == KvCacheDType.Fp32)
        {
            return CreateCache();
        }
        const int blockSize = 16;
        int blocks = KvBlockPool.BlocksNeeded(Config, blockSize, totalTokens, PrefillChunkTokens);
        var pool = new KvBlockPool(Config, blockSize, blocks * KvBlockPool.BytesPerBlock(Config, blockSize, dtype), Backend, dtype: dtype);
        return new RequestKvCache(pool, new PagedKvCache(pool, Config));
    }

    /// <summary>A paged cache that owns its pool (one request).</summary>
    private sealed class RequestKvCache(KvBlockPool pool, PagedKvCache cache) : IKvCache, IDisposable
    {
        public int NextPosition => cache.NextPosition;

        public KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows) => cache.Append(layer, k, v, rows);

        public void Advance(int rows) => cache.Advance(rows);

        public void Dispose()
        {
            cache.Dispose();
            pool.Dispose();
        }
    }

    /// <summary>
    /// Runs <paramref name="promptIds"/> (chunked prefill, logits and routing at every position), then up to
    /// <paramref name="maxNewTokens"/> greedy tokens through the KV cache.
    /// </summary>
    /// <exception cref="ArgumentException">Empty prompt, a token outside the vocabulary, a negative limit, or prompt +
    /// new tokens beyond <c>max_position_embeddings</c>.</exception>
    public async Task<InferenceResult> InferAsync(IReadOnlyList<int> promptIds, int maxNewTokens, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(promptIds);
        var c = Config;
        if (promptIds.Count == 0)
        {
            throw new ArgumentException("the prompt is empty", nameof(promptIds));
        }
        if (maxNewTokens < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens, "must be >= 0");
        }
        if ((long)promptIds.Count + maxNewTokens > c.MaxPositionEmbeddings)
        {
            throw new ArgumentException(
                $"prompt ({promptIds.Count} tokens) + max new tokens ({maxNewTokens}) exceeds max_position_embeddings {c.MaxPositionEmbeddings}");
        }
        for (int i = 0; i < promptIds.Count; i++)
        {
            if ((uint)promptIds[i] >= (uint)c.VocabSize)
            {
                throw new ArgumentException($"prompt token {i} = {promptIds[i]} is outside the vocabulary [0, {c.VocabSize})", nameof(promptIds));
            }
        }

        var prompt = promptIds.ToArray();
        var cache = CreateRequestCache(prompt.Length + maxNewTokens);
        try
        {
            return await InferCoreAsync(prompt, maxNewTokens, cache, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            (cache as IDisposable)?.Dispose();
        }
    }

    private async Task<InferenceResult> InferCoreAsync(int[] prompt, int maxNewTokens, IKvCache cache, CancellationToken cancellationToken)
    {
        var c = Config;
        var argmax = new int[prompt.Length];
        var routing = new Dictionary<int, int[][]>();
        foreach (int il in c.MoeLayerIndices)
        {
            routing[il] = new int[prompt.Length][];
        }
        float[] lastLogits = [];
        // Logit rows per step are bounded too: Maverick's 202,048-entry vocabulary is 0.8 MB per row.
        int piece = Math.Max(1, Math.Min(PrefillChunkTokens, (int)Math.Max(1, (64L << 20) / (4L * c.VocabSize))));
        for (int start = 0; start < prompt.Length; start += piece)
        {
            int n = Math.Min(piece, prompt.Length - start);
            var step = await Model.ForwardAsync([new SequenceStep(cache, prompt.AsMemory(start, n), LogitsRequest.All)], captureRouting: true, cancellationToken)
                .ConfigureAwait(false);
            var ids = new int[n];
            Backend.Argmax(step.Logits, n, c.VocabSize, ids);
            ids.CopyTo(argmax, start);
            foreach (var (il, experts) in step.Routing!)
            {
                for (int j = 0; j < n; j++)
                {
                    routing[il][start + j] = experts.AsSpan(j * c.TopK, c.TopK).ToArray();
                }
            }
            if (start + n == prompt.Length)
            {
                lastLogits = step.Logits.AsSpan((n - 1) * c.VocabSize, c.VocabSize).ToArray();
            }
        }

        var newTokens = new List<int>(maxNewTokens);
        var fedRouting = c.MoeLayerIndices.ToDictionary(il => il, _ => new List<int[]>());
        if (maxNewTokens > 0)
        {
            int next = argmax[^1];
            var one = new int[1];
            while (true)
            {
                newTokens.Add(next);
                if (newTokens.Count >= maxNewTokens || c.EosTokenIds.Contains(next))
                {
                    break;
                }
                one[0] = next;
                var step = await Model.ForwardAsync([new SequenceStep(cache, one, LogitsRequest.Last)], captureRouting: true, cancellationToken)
                    .ConfigureAwait(false);
                foreach (var (il, experts) in step.Routing!)
                {
                    fedRouting[il].Add(experts);
                }
                Backend.Argmax(step.Logits, 1, c.VocabSize, one);
                next = one[0];
            }
        }
        return new InferenceResult(prompt, lastLogits, argmax, routing.ToDictionary(kv => kv.Key, kv => kv.Value), newTokens.ToArray())
        {
            FedTokenExperts = fedRouting.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
        };
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _ownedDispatcher?.Dispose();
        _weights.Dispose();
        _checkpoint.Dispose();
    }
}
