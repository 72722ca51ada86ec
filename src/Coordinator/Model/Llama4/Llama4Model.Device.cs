using System.Buffers;
using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// The device-resident forward step (issue #12): on the CUDA backend, with every sequence's keys in one device KV store of
/// that backend, a step uploads its embedding rows and positions once, keeps the residual stream and every intermediate
/// of every layer in device memory (<see cref="CudaDeviceStep"/>), and crosses PCIe per MoE layer only with the router's
/// top-k, the rows dispatched to the routed experts and their combined results, plus the logits at the end. It launches
/// the same kernels in the same order as the host-staged loop of <see cref="ForwardAsync"/>, so the two agree (bitwise on
/// the emulator, where cuBLAS is deterministic per shape). It runs the step as one lane: <see cref="MicroBatching"/> applies
/// to the host-staged loop only.
/// </summary>
public sealed partial class Llama4Model
{
    /// <summary>What the last device-resident step moved across PCIe and how often it waited (null after a host-staged step).</summary>
    public DeviceStepTraffic? LastDeviceTraffic { get; private set; }

    private static bool OnDevice(CudaKernelBackend cuda, IReadOnlyList<SequenceStep> items)
    {
        IKvBlockStore store = items[0].Cache.Store;
        if (!cuda.OwnsStore(store))
        {
            return false;
        }
        foreach (var item in items)
        {
            if (!ReferenceEquals(item.Cache.Store, store))
            {
                // The host loop reports mixed pools with its usual error.
                return false;
            }
        }
        return true;
    }

    private async ValueTask<StepResult> ForwardOnDeviceAsync(CudaKernelBackend cuda, IReadOnlyList<SequenceStep> items, int t, bool captureRouting,
        CancellationToken cancellationToken)
    {
        if (Observer is null && cuda.TryBeginGraphStep(t) is { } graphStep)
        {
            return await ForwardGraphedAsync(graphStep, items, t, captureRouting, cancellationToken).ConfigureAwait(false);
        }
        int h = _c.HiddenSize, nh = _c.NumHeads, nkv = _c.NumKvHeads, hd = _c.HeadDim;
        int qW = nh * hd, kvW = nkv * hd, qkvW = qW + 2 * kvW;
        float eps = (float)_c.RmsNormEps;
        IKvBlockStore store = items[0].Cache.Store;
        var pool = ArrayPool<float>.Shared;
        // Host buffers: the embeddings on the way in, the dispatched rows and their combined results per MoE layer.
        float[] host = pool.Rent(t * h), routedHost = pool.Rent(t * h);
        int[] positions = new int[t];
        int[] slots = new int[t];
        var sequences = new KvSequenceView[items.Count];
        LastDeviceTraffic = null;
        using var step = cuda.BeginDeviceStep();
        try
        {
            Embed(items, host, positions);
            Observer?.OnTensor("embed", host.AsSpan(0, t * h), t, h);
            DeviceTensor hidden = step.Upload(host.AsSpan(0, t * h));
            DevicePositions pos = step.UploadPositions(positions);
            DeviceTensor x = step.Allocate((long)t * h), qkv = step.Allocate((long)t * qkvW), q = step.Allocate((long)t * qW),
                k = step.Allocate((long)t * kvW), v = step.Allocate((long)t * kvW), attn = step.Allocate((long)t * qW), tmp = step.Allocate((long)t * h),
                routed = step.Allocate((long)t * h);
            DeviceTensor? factors = null;
            if (_c.AttnTemperatureTuning)
            {
                var f = new float[t];
                for (int r = 0; r < t; r++)
                {
                    f[r] = TemperatureFactor(positions[r]);
                }
                factors = step.Upload(f);
            }
            DeviceTensor? routerLogits = null;

            Dictionary<int, int[]>? routing = captureRouting ? [] : null;
            for (int il = 0; il < _c.NumLayers; il++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var lw = _w.Layers[il];

                // The new keys go from device memory straight into the device store: one scatter for the step's rows.
                ReserveSlots(items, il, slots, sequences);
                var tensors = new LayerTensors(hidden, x, qkv, q, k, v, attn, tmp, pos, factors);
                AttentionOnDevice(step, il, t, tensors, (ap, kk, vv) =>
                {
                    step.KvWrite(store, slots, kk, vv);
                    step.Attention(store, q, pos, sequences, ap, attn);
                });

                // --- feed-forward block ---
                if (lw.Router is { } router)
                {
                    routerLogits ??= step.Allocate((long)t * _c.NumExperts);
                    var ids = await MoeOnDeviceAsync(step, il, router, lw, x, t, tmp, routed, routerLogits.Value, host, routedHost, cancellationToken)
                        .ConfigureAwait(false);
                    if (routing is not null)
                    {
                        routing[il] = ids;
                    }
                }
                else
                {
                    step.SwiGluFfn(x, t, lw.FfnGateUp, lw.FfnDown, tmp);
                }
                step.Add(hidden, tmp);
                if (Observer is not null)
                {
                    step.Download(hidden, host.AsSpan(0, t * h));
                    Observer.OnTensor($"L{il}.out", host.AsSpan(0, t * h), t, h);
                }
            }
            if (Observer is not null)
            {
                step.RmsNorm(hidden, t, h, _w.FinalNorm, eps, x);
                step.Download(x, host.AsSpan(0, t * h));
                Observer.OnTensor("final_norm", host.AsSpan(0, t * h), t, h);
            }
            return FinishOnDevice(step, items, hidden, x, tmp, routing);
        }
        finally
        {
            pool.Return(host);
            pool.Return(routedHost);
        }
    }

    /// <summary>The routed experts as a dispatcher that takes this step's device rows (in-process on the same backend), or null.</summary>
    private IDeviceExpertDispatcher? ExpertsOnDevice(CudaDeviceStep step) =>
        _experts is IDeviceExpertDispatcher d && d.CanRunOnDevice(step) ? d : null;

    /// <summary>A step's device tensors for one layer (rows × width each), positions and temperature factors.</summary>
    private readonly record struct LayerTensors(DeviceTensor Hidden, DeviceTensor X, DeviceTensor Qkv, DeviceTensor Q, DeviceTensor K, DeviceTensor V,
        DeviceTensor Attn, DeviceTensor Tmp, DevicePositions Positions, DeviceTensor? Factors);

    // Reserves layer il's KV slots of every item (in item order, rows in step order) and fills its attention views.
    private static void ReserveSlots(IReadOnlyList<SequenceStep> items, int il, Span<int> slots, KvSequenceView[] sequences)
    {
        int row = 0;
        for (int i = 0; i < items.Count; i++)
        {
            int n = items[i].Tokens.Length;
            var view = items[i].Cache.Reserve(il, n, slots.Slice(row, n));
            sequences[i] = new KvSequenceView(n, view.BlockTable, view.FirstSlot, view.Keys, view.KeyPositionStart);
            row += n;
        }
    }

    /// <summary>
    /// Layer <paramref name="il"/>'s attention block on device rows, up to the post-attention norm into x:
    /// <paramref name="kvAndAttention"/> writes the new keys and values to the store and runs the attention into Attn.
    /// </summary>
    private void AttentionOnDevice(CudaDeviceStep step, int il, int rows, in LayerTensors d, Action<AttentionParams, DeviceTensor, DeviceTensor> kvAndAttention)
    {
        int h = _c.HiddenSize, nh = _c.NumHeads, nkv = _c.NumKvHeads, hd = _c.HeadDim;
        int qW = nh * hd, kvW = nkv * hd, qkvW = qW + 2 * kvW;
        float eps = (float)_c.RmsNormEps;
        var lw = _w.Layers[il];
        bool rope = _c.UsesRope(il);
        step.RmsNorm(d.Hidden, rows, h, lw.InputNorm, eps, d.X);
        step.MatMul(d.X, rows, lw.Qkv, d.Qkv);
        step.CopyColumns(d.Qkv, rows, qkvW, 0, qW, d.Q);
        step.CopyColumns(d.Qkv, rows, qkvW, qW, kvW, d.K);
        step.CopyColumns(d.Qkv, rows, qkvW, qW + kvW, kvW, d.V);
        if (rope)
        {
            step.Rope(d.Q, rows, nh, d.Positions, _w.Rope);
            step.Rope(d.K, rows, nkv, d.Positions, _w.Rope);
            if (_c.UseQkNorm)
            {
                step.RmsNorm(d.Q, rows * nh, hd, [], eps, d.Q);
                step.RmsNorm(d.K, rows * nkv, hd, [], eps, d.K);
            }
        }
        else if (d.Factors is { } fs)
        {
            step.ScaleRows(d.Q, rows, qW, fs);
        }
        kvAndAttention(new AttentionParams(nh, nkv, hd, _attnScaling, rope ? _c.AttentionChunkSize : 0), d.K, d.V);
        step.MatMul(d.Attn, rows, lw.O, d.Tmp);
        step.Add(d.Hidden, d.Tmp);
        step.RmsNorm(d.Hidden, rows, h, lw.PostAttentionNorm, eps, d.X);
    }

    /// <summary>
    /// The end of a device step: every cache advanced, the final norm and lm_head on the requested rows only (gathered
    /// from <paramref name="hidden"/> through the scratch tensors <paramref name="tmp"/> and <paramref name="x"/>), logits downloaded.
    /// </summary>
    private StepResult FinishOnDevice(CudaDeviceStep step, IReadOnlyList<SequenceStep> items, DeviceTensor hidden, DeviceTensor x, DeviceTensor tmp,
        Dictionary<int, int[]>? routing)
    {
        int h = _c.HiddenSize;
        foreach (var item in items)
        {
            item.Cache.Advance(item.Tokens.Span);
        }
        var (selected, logitRows) = SelectLogitRows(items);
        int s = selected.Count;
        var logits = new float[s * _c.VocabSize];
        if (s > 0)
        {
            DeviceTensor rows = tmp.Slice(0, (long)s * h), normed = x.Slice(0, (long)s * h);
            step.GatherRows(hidden, h, selected.ToArray(), rows);
            step.RmsNorm(rows, s, h, _w.FinalNorm, (float)_c.RmsNormEps, normed);
            DeviceTensor dLogits = step.Allocate(logits.Length);
            step.MatMul(normed, s, _w.LmHead, dLogits);
            step.Download(dLogits, logits);
        }
        step.Complete();
        LastDeviceTraffic = new DeviceStepTraffic(step.UploadedBytes, step.DownloadedBytes, step.Synchronizations);
        return new StepResult(logits, logitRows, _c.VocabSize, routing);
    }

    /// <summary>
    /// The MoE block of <see cref="MoeDispatchAsync"/> and its combine on the device: router and top-k on the device (ids and scores come back), the
    /// normed rows go to the dispatcher, the shared expert is queued on the device while the routed experts run, and the
    /// combined routed rows come back up to be added. A dispatcher that runs on this step's device
    /// (<see cref="IDeviceExpertDispatcher"/>: the in-process experts on the CUDA backend) takes the device rows and leaves
    /// device rows instead: only the top-k ids and scores cross PCIe.
    /// </summary>
    private async ValueTask<int[]> MoeOnDeviceAsync(CudaDeviceStep step, int il, IWeightMatrix router, Llama4LayerWeights lw, DeviceTensor x, int t,
        DeviceTensor output, DeviceTensor routed, DeviceTensor routerLogits, float[] host, float[] routedHost, CancellationToken cancellationToken)
    {
        int h = _c.HiddenSize, e = _c.NumExperts, topK = _c.TopK;
        DeviceTensor logits = routerLogits.Slice(0, (long)t * e);
        step.MatMul(x, t, router, logits);
        if (Observer is not null)
        {
            var hostLogits = new float[t * e];
            step.Download(logits, hostLogits);
            Observer.OnTensor($"L{il}.router_logits", hostLogits, t, e);
        }
        var ids = new int[t * topK];
        var scores = new float[t * topK];
        // In-process experts on this backend stay on the device (only the routing comes back); otherwise one wait for the
        // routing and the rows to dispatch.
        IDeviceExpertDispatcher? onDevice = ExpertsOnDevice(step);
        if (onDevice is not null)
        {
            step.TopK(logits, t, e, topK, ids, scores);
        }
        else
        {
            step.TopK(logits, t, e, topK, ids, scores, x, host.AsSpan(0, t * h));
        }
        Sigmoid(scores);
        if (onDevice is not null)
        {
            onDevice.RunOnDevice(step, il, x, new RoutingResult(ids, scores, topK), routed);
            step.SwiGluFfn(x, t, lw.FfnGateUp, lw.FfnDown, output);
            step.Add(output, routed);
            return ids;
        }
        var handle = await _experts.DispatchAsync(il, host.AsMemory(0, t * h), new RoutingResult(ids, scores, topK), cancellationToken).ConfigureAwait(false);
        step.SwiGluFfn(x, t, lw.FfnGateUp, lw.FfnDown, output);
        await _experts.CombineAsync(handle, routedHost.AsMemory(0, t * h), cancellationToken).ConfigureAwait(false);
        step.Upload(routedHost.AsSpan(0, t * h), routed);
        step.Add(output, routed);
        return ids;
    }
}

/// <summary>What one device-resident step moved across PCIe (<see cref="Llama4Model.LastDeviceTraffic"/>).</summary>
/// <param name="UploadedBytes">Host → device: embedding rows, positions, temperature factors, KV slots, combined expert rows
/// (with experts on the device: their routed-row tokens, scores and slot rows instead; not the attention's per-call block tables).</param>
/// <param name="DownloadedBytes">Device → host: per MoE layer the top-k ids and scores and (unless the experts run on the device) the dispatched rows, the logits,
/// and what an <see cref="IActivationObserver"/> asked for.</param>
/// <param name="Synchronizations">Times the step waited for the device: one per MoE layer and one for the logits without an observer.</param>
public readonly record struct DeviceStepTraffic(long UploadedBytes, long DownloadedBytes, int Synchronizations);
