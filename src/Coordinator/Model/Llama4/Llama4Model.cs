using System.Buffers;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>Which logits a sequence wants from a forward step.</summary>
public enum LogitsRequest
{
    /// <summary>None (a prefill piece that is not the last).</summary>
    None = 0,
    /// <summary>Only the last row of the sequence's tokens.</summary>
    Last = 1,
    /// <summary>Every row.</summary>
    All = 2,
}

/// <summary>One sequence's share of a batched forward step: its cache and the tokens it appends.</summary>
/// <param name="Cache">The sequence's KV cache; its <see cref="IKvCache.NextPosition"/> is the first token's position.</param>
/// <param name="Tokens">Token ids to run (at least one).</param>
/// <param name="Logits">Which rows' logits to return.</param>
public sealed record SequenceStep(IKvCache Cache, ReadOnlyMemory<int> Tokens, LogitsRequest Logits);

/// <summary>Receives named intermediate tensors (llama.cpp <c>cb()</c> style) for debugging and golden comparisons.</summary>
public interface IActivationObserver
{
    /// <summary>
    /// Called with a tensor <c>[rows, cols]</c> covering every row of the step in item order. Names: <c>embed</c>,
    /// <c>L{il}.out</c> (residual stream after layer il), <c>L{il}.router_logits</c>, <c>final_norm</c>.
    /// The span is only valid during the call.
    /// </summary>
    void OnTensor(string name, ReadOnlySpan<float> data, int rows, int cols);
}

/// <summary>What a forward step returns.</summary>
public sealed class StepResult
{
    internal StepResult(float[] logits, int[] logitRows, int vocab, Dictionary<int, int[]>? routing)
    {
        Logits = logits;
        LogitRowsPerItem = logitRows;
        Vocab = vocab;
        Routing = routing;
    }

    /// <summary><c>[Σ logit rows, vocab]</c>, items in order, each item's rows in token order.</summary>
    public float[] Logits { get; }

    /// <summary>How many logit rows each item got.</summary>
    public int[] LogitRowsPerItem { get; }

    /// <summary>Vocabulary size (row width of <see cref="Logits"/>).</summary>
    public int Vocab { get; }

    /// <summary>When routing capture is on: MoE layer → expert ids <c>[total rows, top_k]</c> in item/token order.</summary>
    public IReadOnlyDictionary<int, int[]>? Routing { get; }
}

/// <summary>
/// The Llama 4 text decoder (HF <c>Llama4ForCausalLM</c>), transcribed straight from modeling_llama4.py: per layer
/// <c>h += attn(rmsnorm(h))</c>, <c>h += ffn(rmsnorm(h))</c>, where attention is iRoPE (RoPE + chunked mask + optional
/// L2 qk-norm on layers with <c>no_rope_layers[i] == 1</c>; NoPE + full mask + temperature tuning on the others) and ffn
/// is a dense SwiGLU or the MoE block (router → dispatch → shared expert → combine). Free of transport code: routed
/// experts go through <see cref="IExpertDispatcher"/>.
/// Batched: one step runs any number of sequences, each with its own paged cache in one pool; every matmul, the one
/// attention call per layer and the MoE dispatch see all rows at once, and each row's result does not depend on the
/// others (kernel batch invariance).
/// </summary>
public sealed class Llama4Model
{
    private readonly Llama4Weights _w;
    private readonly IKernelBackend _backend;
    private readonly IExpertDispatcher _experts;
    private readonly Llama4TextConfig _c;
    private readonly float _attnScaling;

    /// <summary>Creates the model over loaded weights.</summary>
    public Llama4Model(Llama4Weights weights, IKernelBackend backend, IExpertDispatcher experts)
    {
        _w = weights ?? throw new ArgumentNullException(nameof(weights));
        _backend = backend ?? throw new ArgumentNullException(nameof(backend));
        _experts = experts ?? throw new ArgumentNullException(nameof(experts));
        _c = weights.Config;
        // HF: self.scaling = head_dim ** -0.5
        _attnScaling = (float)Math.Pow(_c.HeadDim, -0.5);
    }

    /// <summary>The model's config.</summary>
    public Llama4TextConfig Config => _c;

    /// <summary>Debug hook; null (the default) costs nothing.</summary>
    public IActivationObserver? Observer { get; set; }

    /// <summary>
    /// Runs one step: every item appends its tokens at its cache's next positions and gets the logits it asked for.
    /// </summary>
    /// <param name="captureRouting">Return the top-k expert ids of every row in every MoE layer.</param>
    /// <exception cref="ArgumentException">No items, items whose caches are in different pools, an item has no tokens, a token is outside the vocabulary, or a position would
    /// exceed <c>max_position_embeddings</c>.</exception>
    public async ValueTask<StepResult> ForwardAsync(IReadOnlyList<SequenceStep> items, bool captureRouting, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(items);
        if (items.Count == 0)
        {
            throw new ArgumentException("a step needs at least one sequence", nameof(items));
        }
        int h = _c.HiddenSize, nh = _c.NumHeads, nkv = _c.NumKvHeads, hd = _c.HeadDim;
        int qW = nh * hd, kvW = nkv * hd, qkvW = qW + 2 * kvW;

        int t = 0;
        foreach (var item in items)
        {
            if (item.Tokens.Length == 0)
            {
                throw new ArgumentException("every sequence step needs at least one token", nameof(items));
            }
            if ((long)item.Cache.NextPosition + item.Tokens.Length > _c.MaxPositionEmbeddings)
            {
                throw new ArgumentException(
                    $"positions up to {item.Cache.NextPosition + item.Tokens.Length - 1} exceed max_position_embeddings {_c.MaxPositionEmbeddings}", nameof(items));
            }
            foreach (int tok in item.Tokens.Span)
            {
                if ((uint)tok >= (uint)_c.VocabSize)
                {
                    throw new ArgumentException($"token id {tok} is outside the vocabulary [0, {_c.VocabSize})", nameof(items));
                }
            }
            t += item.Tokens.Length;
        }

        var pool = ArrayPool<float>.Shared;
        float[] hidden = pool.Rent(t * h), x = pool.Rent(t * h), qkv = pool.Rent(t * qkvW), q = pool.Rent(t * qW),
            k = pool.Rent(t * kvW), v = pool.Rent(t * kvW), attn = pool.Rent(t * qW), tmp = pool.Rent(t * h);
        int[] positions = new int[t];
        var sequences = new KvSequenceView[items.Count];
        try
        {
            int row = 0;
            foreach (var item in items)
            {
                var toks = item.Tokens.Span;
                for (int j = 0; j < toks.Length; j++, row++)
                {
                    positions[row] = item.Cache.NextPosition + j;
                    _w.Embed(toks[j], hidden.AsSpan(row * h, h));
                }
            }
            Observer?.OnTensor("embed", hidden.AsSpan(0, t * h), t, h);

            Dictionary<int, int[]>? routing = captureRouting ? [] : null;
            for (int il = 0; il < _c.NumLayers; il++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var lw = _w.Layers[il];
                bool rope = _c.UsesRope(il);

                // --- attention block ---
                _backend.RmsNorm(hidden.AsSpan(0, t * h), t, h, lw.InputNorm, (float)_c.RmsNormEps, x.AsSpan(0, t * h));
                _backend.MatMul(x.AsSpan(0, t * h), t, lw.Qkv, qkv.AsSpan(0, t * qkvW));
                for (int r = 0; r < t; r++)
                {
                    var src = qkv.AsSpan(r * qkvW, qkvW);
                    src[..qW].CopyTo(q.AsSpan(r * qW, qW));
                    src.Slice(qW, kvW).CopyTo(k.AsSpan(r * kvW, kvW));
                    src.Slice(qW + kvW, kvW).CopyTo(v.AsSpan(r * kvW, kvW));
                }
                if (rope)
                {
                    _backend.Rope(q.AsSpan(0, t * qW), t, nh, positions, _w.Rope);
                    _backend.Rope(k.AsSpan(0, t * kvW), t, nkv, positions, _w.Rope);
                    if (_c.UseQkNorm)
                    {
                        // HF Llama4TextL2Norm (no weight, eps = rms_norm_eps), after RoPE, RoPE layers only.
                        _backend.RmsNorm(q.AsSpan(0, t * qW), t * nh, hd, [], (float)_c.RmsNormEps, q.AsSpan(0, t * qW));
                        _backend.RmsNorm(k.AsSpan(0, t * kvW), t * nkv, hd, [], (float)_c.RmsNormEps, k.AsSpan(0, t * kvW));
                    }
                }
                else if (_c.AttnTemperatureTuning)
                {
                    // Attention temperature tuning on NoPE layers (arXiv 2501.19399; HF Llama4TextAttention):
                    // q *= log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1, each step in float32.
                    for (int r = 0; r < t; r++)
                    {
                        float factor = TemperatureFactor(positions[r]);
                        var qr = q.AsSpan(r * qW, qW);
                        for (int j = 0; j < qr.Length; j++)
                        {
                            qr[j] *= factor;
                        }
                    }
                }

                // One attention call per layer for every sequence of the step, over the keys where the store keeps them
                // (device memory on CUDA): each row's result depends only on its own sequence.
                var ap = new AttentionParams(nh, nkv, hd, _attnScaling, rope ? _c.AttentionChunkSize : 0);
                IKvBlockStore? store = null;
                row = 0;
                for (int i = 0; i < items.Count; i++)
                {
                    int n = items[i].Tokens.Length;
                    var view = items[i].Cache.Append(il, k.AsSpan(row * kvW, n * kvW), v.AsSpan(row * kvW, n * kvW), n);
                    store ??= view.Store;
                    if (!ReferenceEquals(store, view.Store))
                    {
                        throw new ArgumentException("every sequence of a step must keep its keys in the same block store (one pool)", nameof(items));
                    }
                    sequences[i] = new KvSequenceView(n, view.BlockTable, view.FirstSlot, view.Keys, view.KeyPositionStart);
                    row += n;
                }
                store!.AttentionBatch(q.AsSpan(0, t * qW), positions, sequences, ap, attn.AsSpan(0, t * qW));
                _backend.MatMul(attn.AsSpan(0, t * qW), t, lw.O, tmp.AsSpan(0, t * h));
                _backend.Add(hidden.AsSpan(0, t * h), tmp.AsSpan(0, t * h));

                // --- feed-forward block ---
                _backend.RmsNorm(hidden.AsSpan(0, t * h), t, h, lw.PostAttentionNorm, (float)_c.RmsNormEps, x.AsSpan(0, t * h));
                if (lw.Router is { } router)
                {
                    var ids = await MoeAsync(il, router, lw, x, t, tmp, cancellationToken).ConfigureAwait(false);
                    if (routing is not null)
                    {
                        routing[il] = ids;
                    }
                }
                else
                {
                    _backend.SwiGluFfn(x.AsSpan(0, t * h), t, lw.FfnGateUp, lw.FfnDown, tmp.AsSpan(0, t * h));
                }
                _backend.Add(hidden.AsSpan(0, t * h), tmp.AsSpan(0, t * h));
                Observer?.OnTensor($"L{il}.out", hidden.AsSpan(0, t * h), t, h);
            }
            foreach (var item in items)
            {
                item.Cache.Advance(item.Tokens.Span);
            }

            // --- final norm + lm_head on the requested rows only ---
            int[] logitRows = new int[items.Count];
            var selected = new List<int>();
            row = 0;
            for (int i = 0; i < items.Count; i++)
            {
                int n = items[i].Tokens.Length;
                switch (items[i].Logits)
                {
                    case LogitsRequest.All:
                        for (int j = 0; j < n; j++)
                        {
                            selected.Add(row + j);
                        }
                        logitRows[i] = n;
                        break;
                    case LogitsRequest.Last:
                        selected.Add(row + n - 1);
                        logitRows[i] = 1;
                        break;
                }
                row += n;
            }
            if (Observer is not null)
            {
                _backend.RmsNorm(hidden.AsSpan(0, t * h), t, h, _w.FinalNorm, (float)_c.RmsNormEps, x.AsSpan(0, t * h));
                Observer.OnTensor("final_norm", x.AsSpan(0, t * h), t, h);
            }
            int s = selected.Count;
            for (int i = 0; i < s; i++)
            {
                hidden.AsSpan(selected[i] * h, h).CopyTo(tmp.AsSpan(i * h, h));
            }
            var logits = new float[s * _c.VocabSize];
            if (s > 0)
            {
                _backend.RmsNorm(tmp.AsSpan(0, s * h), s, h, _w.FinalNorm, (float)_c.RmsNormEps, x.AsSpan(0, s * h));
                _backend.MatMul(x.AsSpan(0, s * h), s, _w.LmHead, logits);
            }
            return new StepResult(logits, logitRows, _c.VocabSize, routing);
        }
        finally
        {
            pool.Return(hidden);
            pool.Return(x);
            pool.Return(qkv);
            pool.Return(q);
            pool.Return(k);
            pool.Return(v);
            pool.Return(attn);
            pool.Return(tmp);
        }
    }

    /// <summary>
    /// Llama4TextMoe: router logits → top-k → sigmoid of the chosen logits → dispatch (score scales the expert INPUT) →
    /// shared expert locally while the routed experts run → combine → shared + routed. Writes the block output to
    /// <paramref name="output"/> and returns the chosen expert ids <c>[t, top_k]</c>.
    /// </summary>
    private async ValueTask<int[]> MoeAsync(int il, IWeightMatrix router, Llama4LayerWeights lw, float[] x, int t, float[] output,
        CancellationToken cancellationToken)
    {
        int h = _c.HiddenSize, e = _c.NumExperts, topK = _c.TopK;
        var logits = new float[t * e];
        _backend.MatMul(x.AsSpan(0, t * h), t, router, logits);
        Observer?.OnTensor($"L{il}.router_logits", logits, t, e);
        var ids = new int[t * topK];
        var scores = new float[t * topK];
        _backend.TopK(logits, t, e, topK, ids, scores);
        for (int i = 0; i < scores.Length; i++)
        {
            scores[i] = (float)(1.0 / (1.0 + Math.Exp(-scores[i])));
        }
        var handle = await _experts.DispatchAsync(il, x.AsMemory(0, t * h), new RoutingResult(ids, scores, topK), cancellationToken).ConfigureAwait(false);
        _backend.SwiGluFfn(x.AsSpan(0, t * h), t, lw.FfnGateUp, lw.FfnDown, output.AsSpan(0, t * h));
        // shared + routed, the routed slot sum added straight into the shared expert's output (bitwise the same as
        // combining into a buffer and adding it).
        await _experts.CombineAddAsync(handle, output.AsMemory(0, t * h), cancellationToken).ConfigureAwait(false);
        return ids;
    }

    /// <summary>The NoPE-layer query factor at absolute position <paramref name="position"/>, float32 at every step as HF computes it.</summary>
    internal float TemperatureFactor(int position)
    {
        float p1 = position + 1.0f;
        float ratio = p1 / (float)_c.FloorScale;
        float fl = MathF.Floor(ratio);
        float lg = (float)Math.Log(1.0 + fl);
        float scaled = lg * (float)_c.AttnScale;
        return scaled + 1.0f;
    }
}
