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
                bool rope = _c.UsesRope(il);

                // --- attention block ---
                step.RmsNorm(hidden, t, h, lw.InputNorm, eps, x);
                step.MatMul(x, t, lw.Qkv, qkv);
                step.CopyColumns(qkv, t, qkvW, 0, qW, q);
                step.CopyColumns(qkv, t, qkvW, qW, kvW, k);
                step.CopyColumns(qkv, t, qkvW, qW + kvW, kvW, v);
                if (rope)
                {
                    step.Rope(q, t, nh, pos, _w.Rope);
                    step.Rope(k, t, nkv, pos, _w.Rope);
                    if (_c.UseQkNorm)
                    {
                        step.RmsNorm(q, t * nh, hd, [], eps, q);
                        step.RmsNorm(k, t * nkv, hd, [], eps, k);
                    }
                }
                else if (factors is { } fs)
                {
                    step.ScaleRows(q, t, qW, fs);
                }

                // The new keys go from device memory straight into the device store: one scatter for the step's rows.
                int row = 0;
                for (int i = 0; i < items.Count; i++)
                {
                    int n = items[i].Tokens.Length;
                    var view = items[i].Cache.Reserve(il, n, slots.AsSpan(row, n));
                    sequences[i] = new KvSequenceView(n, view.BlockTable, view.FirstSlot, view.Keys, view.KeyPositionStart);
                    row += n;
                }
                step.KvWrite(store, slots, k, v);
                var ap = new AttentionParams(nh, nkv, hd, _attnScaling, rope ? _c.AttentionChunkSize : 0);
                step.Attention(store, q, pos, sequences, ap, attn);
                step.MatMul(attn, t, lw.O, tmp);
                step.Add(hidden, tmp);

                // --- feed-forward block ---
                step.RmsNorm(hidden, t, h, lw.PostAttentionNorm, eps, x);
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
            foreach (var item in items)
            {
                item.Cache.Advance(item.Tokens.Span);
            }

            // --- final norm + lm_head on the requested rows only ---
            var (selected, logitRows) = SelectLogitRows(items);
            if (Observer is not null)
            {
                step.RmsNorm(hidden, t, h, _w.FinalNorm, eps, x);
                step.Download(x, host.AsSpan(0, t * h));
                Observer.OnTensor("final_norm", host.AsSpan(0, t * h), t, h);
            }
            int s = selected.Count;
            var logits = new float[s * _c.VocabSize];
            if (s > 0)
            {
                DeviceTensor rows = tmp.Slice(0, (long)s * h), normed = x.Slice(0, (long)s * h);
                step.GatherRows(hidden, h, selected.ToArray(), rows);
                step.RmsNorm(rows, s, h, _w.FinalNorm, eps, normed);
                DeviceTensor dLogits = step.Allocate(logits.Length);
                step.MatMul(normed, s, _w.LmHead, dLogits);
                step.Download(dLogits, logits);
            }
            step.Complete();
            LastDeviceTraffic = new DeviceStepTraffic(step.UploadedBytes, step.DownloadedBytes, step.Synchronizations);
            return new StepResult(logits, logitRows, _c.VocabSize, routing);
        }
        finally
        {
            pool.Return(host);
            pool.Return(routedHost);
        }
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
        IDeviceExpertDispatcher? onDevice = _experts is IDeviceExpertDispatcher d && d.CanRunOnDevice(step) ? d : null;
        if (onDevice is not null)
        {
            step.TopK(logits, t, e, topK, ids, scores);
        }
        else
        {
            step.TopK(logits, t, e, topK, ids, scores, x, host.AsSpan(0, t * h));
        }
        for (int i = 0; i < scores.Length; i++)
        {
            scores[i] = (float)(1.0 / (1.0 + Math.Exp(-scores[i])));
        }
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
