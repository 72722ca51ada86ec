using Distributed.Checkpoint;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;

namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>The outputs of <see cref="EngineInference.InferAsync(Llama4Engine, IReadOnlyList{int}, int, CancellationToken)"/> (the <c>infer --json</c> contract).</summary>
/// <param name="PromptIds">The prompt (with images: the expanded prompt the model ran).</param>
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
/// <c>infer</c>: one greedy request through the <see cref="ContinuousBatchScheduler"/> (the one generation loop) on a KV
/// pool sized for it, with the prompt's logits argmax, routing and last logits recorded on the way.
/// </summary>
public static class EngineInference
{
    /// <summary>
    /// Runs <paramref name="promptIds"/> (prefill in pieces of <see cref="Llama4Engine.PrefillChunkTokens"/>, logits and
    /// routing at every position), then up to <paramref name="maxNewTokens"/> greedy tokens through the KV cache.
    /// </summary>
    /// <exception cref="ArgumentException">Empty prompt, a token outside the vocabulary, a negative limit, or prompt +
    /// new tokens beyond <c>max_position_embeddings</c>.</exception>
    public static Task<InferenceResult> InferAsync(this Llama4Engine engine, IReadOnlyList<int> promptIds, int maxNewTokens, CancellationToken cancellationToken)
        => InferAsync(engine, promptIds, maxNewTokens, null, cancellationToken);

    /// <summary>
    /// <see cref="InferAsync(Llama4Engine, IReadOnlyList{int}, int, CancellationToken)"/> for a prompt with images: the
    /// vision tower encodes every image once and its projected rows replace the embeddings at the <c>&lt;|patch|&gt;</c>
    /// positions of <paramref name="promptIds"/> (already expanded), whichever prefill chunk they fall in.
    /// </summary>
    /// <exception cref="ArgumentException">As above; or images for a model without a vision tower, or patch positions that
    /// do not match the prompt's <c>&lt;|patch|&gt;</c> tokens.</exception>
    public static async Task<InferenceResult> InferAsync(this Llama4Engine engine, IReadOnlyList<int> promptIds, int maxNewTokens,
        Model.Llama4.Vision.Llama4ImagePrompt? images, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(promptIds);
        var c = engine.Config;
        if (promptIds.Count == 0)
        {
            throw new ArgumentException("the prompt is empty", nameof(promptIds));
        }
        if (maxNewTokens < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens, "must be >= 0");
        }
        if ((long)promptIds.Count + Math.Max(1, maxNewTokens) > c.MaxPositionEmbeddings)
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
        // maxNewTokens 0: the first token comes from the prefill's last logits anyway; it is run and dropped.
        int generate = Math.Max(1, maxNewTokens);
        var capture = new PromptCapture(c, prompt.Length);
        await using var scheduler = ForOneRequest(engine, prompt.Length + generate);
        var tokens = new List<int>(generate);
        var request = new GenerationRequest($"infer-{Guid.NewGuid():N}", prompt, generate, SamplingParams.Greedy) { Images = images };
        await foreach (var t in scheduler.GenerateAsync(request, capture, cancellationToken).ConfigureAwait(false))
        {
            tokens.Add(t.TokenId);
        }
        return capture.Result(prompt, maxNewTokens == 0 ? [] : [.. tokens]);
    }

    /// <summary>
    /// A scheduler for one sequence of at most <paramref name="totalTokens"/> positions: prefill steps of
    /// <see cref="Llama4Engine.PrefillChunkTokens"/>, a KV pool holding that sequence's worst case (device memory on
    /// CUDA) in <see cref="Llama4Engine.KvDType"/>, no prefix caching. Dispose it after the request.
    /// </summary>
    public static ContinuousBatchScheduler ForOneRequest(Llama4Engine engine, int totalTokens)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalTokens);
        const int blockSize = 16;
        int chunk = engine.PrefillChunkTokens;
        var dtype = engine.KvDType ?? Kernels.KvCacheDTypes.DefaultFor(engine.Backend);
        long bytes = KvBlockPool.BlocksNeeded(engine.Config, blockSize, totalTokens, chunk) * KvBlockPool.BytesPerBlock(engine.Config, blockSize, dtype);
        return new ContinuousBatchScheduler(engine, new SchedulerOptions
        {
            MaxQueuedRequests = 1,
            MaxRunningSequences = 1,
            MaxBatchTokens = chunk,
            PrefillChunkTokens = chunk,
            KvBlockSize = blockSize,
            KvMemoryBytes = Math.Max(1L << 16, bytes),
            PrefixCaching = false,
            KvDType = dtype,
        });
    }
}

/// <summary>What <c>infer</c> records of a prompt as the scheduler runs it: argmax and routing per position, last logits.</summary>
internal sealed class PromptCapture
{
    private readonly Llama4TextConfig _config;
    private readonly int[] _argmax;
    private readonly Dictionary<int, int[][]> _experts = [];
    private readonly Dictionary<int, List<int[]>> _fed = [];
    private float[] _lastLogits = [];

    public PromptCapture(Llama4TextConfig config, int promptLength)
    {
        _config = config;
        _argmax = new int[promptLength];
        foreach (int il in config.MoeLayerIndices)
        {
            _experts[il] = new int[promptLength][];
            _fed[il] = [];
        }
    }

    /// <summary>
    /// Records the step rows of positions <c>[start, start + count)</c>: <paramref name="logits"/> holds
    /// <paramref name="rows"/> rows (every row while in the prompt), <paramref name="routing"/> the step's routing with this
    /// sequence's rows from <paramref name="routingRow"/>. Idempotent: a recomputed position records the same values.
    /// </summary>
    public void Record(Llama4Engine engine, int start, int count, ReadOnlySpan<float> logits, int rows, IReadOnlyDictionary<int, int[]> routing, int routingRow,
        int promptLength)
    {
        int vocab = _config.VocabSize, topK = _config.TopK;
        var one = new int[1];
        for (int j = 0; j < count; j++)
        {
            int position = start + j;
            if (position < promptLength && rows == count)
            {
                engine.Backend.Argmax(logits.Slice(j * vocab, vocab), 1, vocab, one);
                _argmax[position] = one[0];
                if (position == promptLength - 1)
                {
                    _lastLogits = logits.Slice(j * vocab, vocab).ToArray();
                }
            }
            foreach (var (il, ids) in routing)
            {
                var expert = ids.AsSpan((routingRow + j) * topK, topK).ToArray();
                if (position < promptLength)
                {
                    _experts[il][position] = expert;
                }
                else
                {
                    var fed = _fed[il];
                    int index = position - promptLength;
                    while (fed.Count <= index)
                    {
                        fed.Add([]);
                    }
                    fed[index] = expert;
                }
            }
        }
    }

    public InferenceResult Result(int[] prompt, int[] newTokens) =>
        new(prompt, _lastLogits, _argmax, _experts, newTokens)
        {
            FedTokenExperts = _fed.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
        };
}
