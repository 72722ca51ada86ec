using System.Buffers;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
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
public sealed record SequenceStep(IKvCache Cache, ReadOnlyMemory<int> Tokens, LogitsRequest Logits)
{
    /// <summary>
    /// Input rows that replace the token embeddings at given offsets of <see cref="Tokens"/> (the projected image
    /// features at the <c>&lt;|patch|&gt;</c> positions, HF <c>inputs_embeds.masked_scatter</c>); null = plain embeddings.
    /// </summary>
    public EmbeddingOverrides? Embeddings { get; init; }
}

/// <summary>Embedding rows for some tokens of a <see cref="SequenceStep"/>.</summary>
/// <param name="Offsets">Token offsets within the step's tokens, strictly ascending.</param>
/// <param name="Rows"><c>[Offsets.Length, hidden]</c>: row i replaces the embedding of token <c>Offsets[i]</c>.</param>
public sealed record EmbeddingOverrides(ReadOnlyMemory<int> Offsets, ReadOnlyMemory<float> Rows);

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
public sealed partial class Llama4Model
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
            if (item.Embeddings is { } overrides)
            {
                CheckOverrides(overrides, item.Tokens.Length, h);
            }
            t += item.Tokens.Length;
        }

        LastGraphLaunches = 0;
        if (_backend is CudaKernelBackend { Options.DevicePath: true } cuda && OnDevice(cuda, items))
        {
            return await ForwardOnDeviceAsync(cuda, items, t, captureRouting, cancellationToken).ConfigureAwait(false);
        }
        LastDeviceTraffic = null;

        var pool = ArrayPool<float>.Shared;
        float[] hidden = pool.Rent(t * h), x = pool.Rent(t * h), qkv = pool.Rent(t * qkvW), q = pool.Rent(t * qW),
            k = pool.Rent(t * kvW), v = pool.Rent(t * kvW), attn = pool.Rent(t * qW), tmp = pool.Rent(t * h);
        int[] positions = new int[t];
        var sequences = new KvSequenceView[items.Count];
        try
        {
            Embed(items, hidden, positions);
            Observer?.OnTensor("embed", hidden.AsSpan(0, t * h), t, h);

            var lanes = Lanes(items, t);
            var bufs = new StepBuffers(hidden, x, qkv, q, k, v, attn, tmp, positions, sequences);
            var laneRouting = captureRouting ? new int[lanes.Length][][] : null;
            if (lanes.Length == 1)
            {
                await RunLayersAsync(items, lanes[0], bufs, null, laneRouting is null ? null : laneRouting[0] = new int[_c.NumLayers][], cancellationToken)
                    .ConfigureAwait(false);
            }
            else
            {
                // Micro-batch ping-pong: the lanes take turns on the kernels (one holds the gate at a time) and give it up
                // while their rows are at the experts, so one lane's attention, router and shared expert run while the
                // other's routed rows are on the wire. Rows are disjoint, and every kernel is batch invariant, so each
                // row's result is bitwise what the unsplit step computes.
                using var gate = new SemaphoreSlim(1, 1);
                using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                var running = new Task[lanes.Length];
                for (int l = 0; l < lanes.Length; l++)
                {
                    var laneIds = laneRouting is null ? null : laneRouting[l] = new int[_c.NumLayers][];
                    running[l] = RunLaneAsync(items, lanes[l], bufs, gate, laneIds, failed);
                }
                await Task.WhenAll(running).ConfigureAwait(false);
            }
            Dictionary<int, int[]>? routing = null;
            if (laneRouting is not null)
            {
                routing = [];
                foreach (int il in _c.MoeLayers)
                {
                    routing[il] = [.. laneRouting.SelectMany(lane => lane[il])];
                }
            }
            foreach (var item in items)
            {
                item.Cache.Advance(item.Tokens.Span);
            }

            // --- final norm + lm_head on the requested rows only ---
            var (selected, logitRows) = SelectLogitRows(items);
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
    /// Micro-batch ping-pong (issue #15): when on, a step of at least <see cref="MicroBatching.MinTokens"/> tokens over
    /// at least two sequences is split into two micro-batches (contiguous runs of sequences with about half the tokens
    /// each) that take turns on the kernels: while one micro-batch's routed rows are at the experts, the other runs its
    /// attention, router and shared expert. Outputs are bitwise those of the unsplit step (every kernel is batch
    /// invariant and the micro-batches share no rows). Ignored while an <see cref="Observer"/> is set (its tensors cover
    /// the whole step). Default: <see cref="MicroBatching.Off"/>.
    /// </summary>
    public MicroBatching MicroBatching { get; set; } = MicroBatching.Off;

    /// <summary>Rows [<paramref name="FirstRow"/>, +<paramref name="Rows"/>) of a step: items [<paramref name="FirstItem"/>, +<paramref name="Items"/>).</summary>
    private readonly record struct Lane(int FirstItem, int Items, int FirstRow, int Rows);

    /// <summary>The step's row-major buffers, shared by its lanes (each works on its own rows).</summary>
    private sealed record StepBuffers(float[] Hidden, float[] X, float[] Qkv, float[] Q, float[] K, float[] V, float[] Attn, float[] Tmp, int[] Positions,
        KvSequenceView[] Sequences);

    // One lane, or two of about half the tokens each (the split point with the smallest imbalance; sequences stay whole).
    private Lane[] Lanes(IReadOnlyList<SequenceStep> items, int t)
    {
        var mb = MicroBatching;
        if (!mb.Enabled || Observer is not null || items.Count < 2 || t < mb.MinTokens)
        {
            return [new Lane(0, items.Count, 0, t)];
        }
        int best = 1, bestRows = items[0].Tokens.Length, rows = 0;
        for (int i = 1; i < items.Count; i++)
        {
            rows += items[i - 1].Tokens.Length;
            if (Math.Abs(2 * rows - t) < Math.Abs(2 * bestRows - t))
            {
                best = i;
                bestRows = rows;
            }
        }
        return [new Lane(0, best, 0, bestRows), new Lane(best, items.Count - best, bestRows, t - bestRows)];
    }

    private async Task RunLaneAsync(IReadOnlyList<SequenceStep> items, Lane lane, StepBuffers b, SemaphoreSlim gate, int[][]? routing,
        CancellationTokenSource failed)
    {
        try
        {
            await RunLayersAsync(items, lane, b, gate, routing, failed.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // The other lane stops at its next layer instead of running the step to its end for nothing.
            failed.Cancel();
            throw;
        }
    }

    // Every decoder layer over one lane's rows. With a gate, the lane holds it while it uses the kernels and gives it up
    // while its routed rows are at the experts (the combine itself only decodes into this lane's rows).
    private async Task RunLayersAsync(IReadOnlyList<SequenceStep> items, Lane lane, StepBuffers b, SemaphoreSlim? gate, int[][]? routing,
        CancellationToken cancellationToken)
    {
        int h = _c.HiddenSize, nh = _c.NumHeads, nkv = _c.NumKvHeads, hd = _c.HeadDim;
        int qW = nh * hd, kvW = nkv * hd, qkvW = qW + 2 * kvW;
        int r0 = lane.FirstRow, t = lane.Rows;
        bool held = false;
        if (gate is not null)
        {
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            held = true;
        }
        try
        {
            for (int il = 0; il < _c.NumLayers; il++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var lw = _w.Layers[il];
                bool rope = _c.UsesRope(il);
                var hidden = b.Hidden.AsMemory(r0 * h, t * h);
                var x = b.X.AsMemory(r0 * h, t * h);
                var tmp = b.Tmp.AsMemory(r0 * h, t * h);
                var qkv = b.Qkv.AsSpan(r0 * qkvW, t * qkvW);
                var q = b.Q.AsSpan(r0 * qW, t * qW);
                var k = b.K.AsSpan(r0 * kvW, t * kvW);
                var v = b.V.AsSpan(r0 * kvW, t * kvW);
                var attn = b.Attn.AsSpan(r0 * qW, t * qW);
                var positions = b.Positions.AsSpan(r0, t);

                // --- attention block ---
                _backend.RmsNorm(hidden.Span, t, h, lw.InputNorm, (float)_c.RmsNormEps, x.Span);
                _backend.MatMul(x.Span, t, lw.Qkv, qkv);
                for (int r = 0; r < t; r++)
                {
                    var src = qkv.Slice(r * qkvW, qkvW);
                    src[..qW].CopyTo(q.Slice(r * qW, qW));
                    src.Slice(qW, kvW).CopyTo(k.Slice(r * kvW, kvW));
                    src.Slice(qW + kvW, kvW).CopyTo(v.Slice(r * kvW, kvW));
                }
                if (rope)
                {
                    _backend.Rope(q, t, nh, positions, _w.Rope);
                    _backend.Rope(k, t, nkv, positions, _w.Rope);
                    if (_c.UseQkNorm)
                    {
                        // HF Llama4TextL2Norm (no weight, eps = rms_norm_eps), after RoPE, RoPE layers only.
                        _backend.RmsNorm(q, t * nh, hd, [], (float)_c.RmsNormEps, q);
                        _backend.RmsNorm(k, t * nkv, hd, [], (float)_c.RmsNormEps, k);
                    }
                }
                else if (_c.AttnTemperatureTuning)
                {
                    // Attention temperature tuning on NoPE layers (arXiv 2501.19399; HF Llama4TextAttention):
                    // q *= log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1, each step in float32.
                    for (int r = 0; r < t; r++)
                    {
                        float factor = TemperatureFactor(positions[r]);
                        var qr = q.Slice(r * qW, qW);
                        for (int j = 0; j < qr.Length; j++)
                        {
                            qr[j] *= factor;
                        }
                    }
                }

                // One attention call per layer for every sequence of the lane, over the keys where the store keeps them
                // (device memory on CUDA): each row's result depends only on its own sequence.
                var ap = new AttentionParams(nh, nkv, hd, _attnScaling, rope ? _c.AttentionChunkSize : 0);
                IKvBlockStore? store = null;
                int row = 0;
                for (int i = lane.FirstItem; i < lane.FirstItem + lane.Items; i++)
                {
                    int n = items[i].Tokens.Length;
                    var view = items[i].Cache.Append(il, k.Slice(row * kvW, n * kvW), v.Slice(row * kvW, n * kvW), n);
                    store ??= view.Store;
                    if (!ReferenceEquals(store, view.Store))
                    {
                        throw new ArgumentException("every sequence of a step must keep its keys in the same block store (one pool)", nameof(items));
                    }
                    b.Sequences[i] = new KvSequenceView(n, view.BlockTable, view.FirstSlot, view.Keys, view.KeyPositionStart);
                    row += n;
                }
                store!.AttentionBatch(q, positions, b.Sequences.AsSpan(lane.FirstItem, lane.Items), ap, attn);
                _backend.MatMul(attn, t, lw.O, tmp.Span);
                _backend.Add(hidden.Span, tmp.Span);

                // --- feed-forward block ---
                _backend.RmsNorm(hidden.Span, t, h, lw.PostAttentionNorm, (float)_c.RmsNormEps, x.Span);
                if (lw.Router is { } router)
                {
                    var (ids, handle) = await MoeDispatchAsync(il, router, lw, x, t, tmp, cancellationToken).ConfigureAwait(false);
                    if (routing is not null)
                    {
                        routing[il] = ids;
                    }
                    if (gate is not null)
                    {
                        held = false;
                        gate.Release();
                    }
                    // shared + routed, the routed slot sum added straight into the shared expert's output (bitwise the
                    // same as combining into a buffer and adding it).
                    await _experts.CombineAddAsync(handle, tmp, cancellationToken).ConfigureAwait(false);
                    if (gate is not null)
                    {
                        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
                        held = true;
                    }
                }
                else
                {
                    _backend.SwiGluFfn(x.Span, t, lw.FfnGateUp, lw.FfnDown, tmp.Span);
                }
                _backend.Add(hidden.Span, tmp.Span);
                Observer?.OnTensor($"L{il}.out", hidden.Span, t, h);
            }
        }
        finally
        {
            if (held)
            {
                gate!.Release();
            }
        }
    }

    /// <summary>
    /// Llama4TextMoe up to the combine: router logits → top-k → sigmoid of the chosen logits → dispatch (score scales the
    /// expert INPUT) → the shared expert computed locally into <paramref name="output"/> while the routed experts run.
    /// Returns the chosen expert ids <c>[t, top_k]</c> and the dispatch, whose combine adds the routed sum to
    /// <paramref name="output"/> (shared + routed).
    /// </summary>
    private async ValueTask<(int[] Ids, DispatchHandle Handle)> MoeDispatchAsync(int il, IWeightMatrix router, Llama4LayerWeights lw, Memory<float> x, int t,
        Memory<float> output, CancellationToken cancellationToken)
    {
        int e = _c.NumExperts, topK = _c.TopK;
        var logits = new float[t * e];
        _backend.MatMul(x.Span, t, router, logits);
        Observer?.OnTensor($"L{il}.router_logits", logits, t, e);
        var ids = new int[t * topK];
        var scores = new float[t * topK];
        _backend.TopK(logits, t, e, topK, ids, scores);
        for (int i = 0; i < scores.Length; i++)
        {
            scores[i] = (float)(1.0 / (1.0 + Math.Exp(-scores[i])));
        }
        var handle = await _experts.DispatchAsync(il, x, new RoutingResult(ids, scores, topK), cancellationToken).ConfigureAwait(false);
        _backend.SwiGluFfn(x.Span, t, lw.FfnGateUp, lw.FfnDown, output.Span);
        return (ids, handle);
    }

    /// <summary>Token embeddings (with the items' overrides) into <paramref name="hidden"/> and each row's absolute position.</summary>
    private void Embed(IReadOnlyList<SequenceStep> items, float[] hidden, int[] positions)
    {
        int h = _c.HiddenSize;
        int row = 0;
        foreach (var item in items)
        {
            var toks = item.Tokens.Span;
            for (int j = 0; j < toks.Length; j++, row++)
            {
                positions[row] = item.Cache.NextPosition + j;
                _w.Embed(toks[j], hidden.AsSpan(row * h, h));
            }
            if (item.Embeddings is { } overrides)
            {
                var offsets = overrides.Offsets.Span;
                for (int j = 0; j < offsets.Length; j++)
                {
                    overrides.Rows.Span.Slice(j * h, h).CopyTo(hidden.AsSpan((row - toks.Length + offsets[j]) * h, h));
                }
            }
        }
    }

    /// <summary>The step rows whose logits the items asked for (in item order) and how many each item gets.</summary>
    private static (List<int> Selected, int[] LogitRows) SelectLogitRows(IReadOnlyList<SequenceStep> items)
    {
        int[] logitRows = new int[items.Count];
        var selected = new List<int>();
        int row = 0;
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
        return (selected, logitRows);
    }

    private static void CheckOverrides(EmbeddingOverrides overrides, int tokens, int hidden)
    {
        var offsets = overrides.Offsets.Span;
        if ((long)offsets.Length * hidden != overrides.Rows.Length)
        {
            throw new ArgumentException($"embedding overrides hold {overrides.Rows.Length} floats for {offsets.Length} offsets of width {hidden}", nameof(overrides));
        }
        for (int j = 0; j < offsets.Length; j++)
        {
            if (offsets[j] < 0 || offsets[j] >= tokens || (j > 0 && offsets[j] <= offsets[j - 1]))
            {
                throw new ArgumentException($"embedding override offset {offsets[j]} is not strictly ascending inside the step's {tokens} tokens", nameof(overrides));
            }
        }
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
