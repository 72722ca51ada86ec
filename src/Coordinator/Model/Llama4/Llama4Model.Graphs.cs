using System.Buffers;
using System.Numerics;
using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// The device-resident step with CUDA graphs (<see cref="CudaBackendOptions.CudaGraphs"/>): the step's rows are padded
/// up to a bucket (<see cref="CudaKernelBackend.GraphBuckets"/>); every tensor is allocated at the bucket's rows in a
/// fixed order on the backend's graph context, so it sits at the same address every step of the bucket; all of the
/// step's varying data (embedding rows, positions, temperature factors, every layer's KV slots, block tables and
/// per-row key counts) is uploaded into fixed buffers before the first kernel; and the work between two host
/// synchronizations runs as one graph launch (<see cref="CudaDeviceStep.Segment"/>). Segments per step, with M MoE layers:
/// <list type="bullet">
/// <item>from the step's start (or a combine) to the next MoE layer's router top-k: attention blocks, dense FFNs, norms,
/// residual adds, the router GEMM and its top-k kernel (M + 1 segments, the last one ending the last layer);</item>
/// <item>each MoE layer's shared expert, launched while the routed rows are at the experts (M segments).</item>
/// </list>
/// Outside the graphs: the top-k and dispatched rows' download and its wait, the dispatch and combine, the combined
/// rows' upload (or, for in-process experts on this backend, their kernels on the device rows), and the final norm and
/// lm_head on the requested rows (their count varies). Padded rows compute on zero
/// embeddings, write no key (slot -1), see no key (0 keys: attention output 0), and are never downloaded or dispatched;
/// every kernel computes each row from that row alone, so real rows' results equal the eager device path's (bitwise
/// on the emulator; on a GPU only as far as cuBLAS picks the same algorithm for the bucket's row count as for the real one).
/// </summary>
public sealed partial class Llama4Model
{
    /// <summary>Block-table entries per row a graph step's table buffer holds at least (its capacity is a power of two above that).</summary>
    private const int MinTableBlocksPerRow = 64;

    /// <summary>Graph launches of the last device-resident step (0 after an eager or host-staged step).</summary>
    public int LastGraphLaunches { get; private set; }

    private async ValueTask<StepResult> ForwardGraphedAsync(CudaDeviceStep step, IReadOnlyList<SequenceStep> items, int t, bool captureRouting,
        CancellationToken cancellationToken)
    {
        using var owned = step;
        int h = _c.HiddenSize, nh = _c.NumHeads, nkv = _c.NumKvHeads, hd = _c.HeadDim, layers = _c.NumLayers;
        int qW = nh * hd, kvW = nkv * hd, qkvW = qW + 2 * kvW, bucket = step.GraphBucket;
        IKvBlockStore store = items[0].Cache.Store;
        var pool = ArrayPool<float>.Shared;
        float[] host = pool.Rent(t * h), routedHost = pool.Rent(t * h);
        LastDeviceTraffic = null;
        try
        {
            int[] positions = new int[bucket];
            Embed(items, host, positions);
            var inputs = PackGraphInputs(items, store, positions, t, bucket);

            // Fixed order and sizes per (bucket, splits, table capacity): the same addresses every step of the graph set.
            DeviceTensor hidden = step.Allocate((long)bucket * h), pos = step.Allocate(bucket), slots = step.Allocate((long)layers * bucket),
                meta = step.Allocate(4L * layers * bucket), tables = step.Allocate((long)layers * inputs.TableCapacity),
                x = step.Allocate((long)bucket * h), qkv = step.Allocate((long)bucket * qkvW), q = step.Allocate((long)bucket * qW),
                k = step.Allocate((long)bucket * kvW), v = step.Allocate((long)bucket * kvW), attn = step.Allocate((long)bucket * qW),
                tmp = step.Allocate((long)bucket * h), routed = step.Allocate((long)bucket * h),
                routerLogits = step.Allocate((long)bucket * _c.NumExperts), topIds = step.Allocate((long)bucket * _c.TopK),
                topScores = step.Allocate((long)bucket * _c.TopK);
            DeviceTensor? factors = _c.AttnTemperatureTuning ? step.Allocate(bucket) : null;

            step.UploadInto<float>(host.AsSpan(0, t * h), hidden);
            step.Zero(hidden.Slice((long)t * h, (long)(bucket - t) * h));
            step.Zero(routed);
            step.UploadInto<int>(positions, pos);
            step.UploadInto<int>(inputs.Slots, slots);
            step.UploadInto<int>(inputs.Meta, meta);
            step.UploadInto<int>(inputs.Tables, tables);
            if (factors is { } fs)
            {
                var f = new float[bucket];
                for (int r = 0; r < bucket; r++)
                {
                    f[r] = TemperatureFactor(positions[r]);
                }
                step.UploadInto<float>(f, fs);
            }
            step.BeginGraphs(this, store, inputs.Splits, inputs.TableCapacity);

            DevicePositions dpos = CudaDeviceStep.PositionsAt(pos, positions);
            var tensors = new LayerTensors(hidden, x, qkv, q, k, v, attn, tmp, dpos, factors);
            Dictionary<int, int[]>? routing = captureRouting ? [] : null;
            bool combined = false;
            int il = 0;
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int moe = il;
                while (moe < layers && _w.Layers[moe].Router is null)
                {
                    moe++;
                }
                int first = il;
                bool addCombined = combined;
                step.Segment(() =>
                {
                    if (addCombined)
                    {
                        // The previous MoE layer: shared expert (in tmp) + routed rows, then the residual.
                        step.Add(tmp, routed);
                        step.Add(hidden, tmp);
                    }
                    for (int j = first; j <= moe && j < layers; j++)
                    {
                        var lw = _w.Layers[j];
                        int layer = j;
                        AttentionOnDevice(step, j, bucket, tensors, (ap, kk, vv) =>
                        {
                            step.KvWrite(store, slots.Slice((long)layer * bucket, bucket), bucket, kk, vv);
                            step.AttentionPacked(store, q, dpos, tables.Slice((long)layer * inputs.TableCapacity, inputs.TableCapacity),
                                meta.Slice(4L * layer * bucket, 4L * bucket), inputs.Splits, ap, attn);
                        });
                        if (lw.Router is { } router)
                        {
                            step.MatMul(x, bucket, router, routerLogits);
                            step.TopKOnDevice(routerLogits, bucket, _c.NumExperts, _c.TopK, topIds, topScores);
                        }
                        else
                        {
                            step.SwiGluFfn(x, bucket, lw.FfnGateUp, lw.FfnDown, tmp);
                            step.Add(hidden, tmp);
                        }
                    }
                });
                if (moe >= layers)
                {
                    break;
                }
                var ids = await RoutedExpertsGraphedAsync(step, moe, x, t, bucket, tmp, routed, topIds, topScores, host, routedHost, cancellationToken)
                    .ConfigureAwait(false);
                if (routing is not null)
                {
                    routing[moe] = ids;
                }
                combined = true;
                il = moe + 1;
            }
            LastGraphLaunches = step.GraphLaunches;
            return FinishOnDevice(step, items, hidden, x, tmp, routing);
        }
        finally
        {
            pool.Return(host);
            pool.Return(routedHost);
        }
    }

    /// <summary>
    /// One MoE layer's host part on a graph step: the top-k and the real rows to dispatch come back with one wait, the
    /// shared expert runs as its own graph while the routed rows are at the experts, and the combined rows go up into
    /// the fixed <paramref name="routed"/> buffer (the next segment adds them). In-process experts on the same backend
    /// (<see cref="IDeviceExpertDispatcher"/>) instead run eagerly on the device rows and write <paramref name="routed"/>
    /// there: only the top-k comes back.
    /// </summary>
    private async ValueTask<int[]> RoutedExpertsGraphedAsync(CudaDeviceStep step, int il, DeviceTensor x, int t, int bucket, DeviceTensor output,
        DeviceTensor routed, DeviceTensor topIds, DeviceTensor topScores, float[] host, float[] routedHost, CancellationToken cancellationToken)
    {
        int h = _c.HiddenSize, topK = _c.TopK;
        var lw = _w.Layers[il];
        var ids = new int[t * topK];
        var scores = new float[t * topK];
        // In-process experts on this backend take the device rows (only the routing comes back); their kernels run
        // eagerly between the graphs, writing the real rows of the fixed routed buffer (padded rows stay zero).
        IDeviceExpertDispatcher? onDevice = ExpertsOnDevice(step);
        if (onDevice is not null)
        {
            step.DownloadTopK(topIds, topScores, ids, scores, default, []);
            onDevice.RunOnDevice(step, il, x.Slice(0, (long)t * h), new RoutingResult(ids, Sigmoid(scores), topK), routed.Slice(0, (long)t * h));
            step.Segment(() => step.SwiGluFfn(x, bucket, lw.FfnGateUp, lw.FfnDown, output));
            return ids;
        }
        step.DownloadTopK(topIds, topScores, ids, scores, x.Slice(0, (long)t * h), host.AsSpan(0, t * h));
        var handle = await _experts.DispatchAsync(il, host.AsMemory(0, t * h), new RoutingResult(ids, Sigmoid(scores), topK), cancellationToken)
            .ConfigureAwait(false);
        step.Segment(() => step.SwiGluFfn(x, bucket, lw.FfnGateUp, lw.FfnDown, output));
        await _experts.CombineAsync(handle, routedHost.AsMemory(0, t * h), cancellationToken).ConfigureAwait(false);
        step.UploadInto<float>(routedHost.AsSpan(0, t * h), routed);
        return ids;
    }

    /// <summary>The router's top-k scores mapped to gate weights in place: 1 / (1 + e^-s), in double as the host path computes it.</summary>
    private static float[] Sigmoid(float[] scores)
    {
        for (int i = 0; i < scores.Length; i++)
        {
            scores[i] = (float)(1.0 / (1.0 + Math.Exp(-scores[i])));
        }
        return scores;
    }

    /// <summary>A graph step's per-layer KV inputs: slots <c>[layers, bucket]</c> (-1 past the real rows), attention meta
    /// <c>[layers, bucket, 4]</c>, block tables <c>[layers, TableCapacity]</c>, and the key splits covering every row.</summary>
    private sealed record GraphInputs(int[] Slots, int[] Meta, int[] Tables, int TableCapacity, int Splits);

    /// <summary>
    /// Reserves every layer's KV slots up front (the same calls in the same order as the eager loop makes them layer by
    /// layer), validates them as the eager path's KV write and attention do, and packs them for the fixed buffers. The
    /// split count and table capacity are rounded up to powers of two so that a graph set serves many steps.
    /// </summary>
    private GraphInputs PackGraphInputs(IReadOnlyList<SequenceStep> items, IKvBlockStore store, int[] positions, int t, int bucket)
    {
        int layers = _c.NumLayers, qW = _c.NumHeads * _c.HeadDim;
        var views = new KvSequenceView[layers][];
        int[] slots = new int[layers * bucket];
        Array.Fill(slots, -1);
        long storeRows = (long)store.Blocks * store.BlockSize;
        int maxTable = 1, maxKeys = 1;
        for (int il = 0; il < layers; il++)
        {
            views[il] = new KvSequenceView[items.Count];
            var layerSlots = slots.AsSpan(il * bucket, t);
            ReserveSlots(items, il, layerSlots, views[il]);
            for (int i = 0; i < t; i++)
            {
                if ((uint)layerSlots[i] >= storeRows)
                {
                    throw new ArgumentException($"slot {layerSlots[i]} (layer {il}, row {i}) is outside the store's {storeRows} rows", nameof(items));
                }
            }
            var ap = new AttentionParams(_c.NumHeads, _c.NumKvHeads, _c.HeadDim, _attnScaling, _c.UsesRope(il) ? _c.AttentionChunkSize : 0);
            KvBlockStores.ValidateAttentionBatch(store, (long)t * qW, positions.AsSpan(0, t), views[il], ap, (long)t * qW);
            maxTable = Math.Max(maxTable, views[il].Sum(s => s.BlockTable.Length));
            maxKeys = Math.Max(maxKeys, views[il].Max(s => s.Keys));
        }
        // At least 64 blocks per row: a graph set then serves a bucket's sequences as they grow to 64 blocks each.
        int tableCapacity = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(maxTable, MinTableBlocksPerRow * bucket));
        int splits = (int)BitOperations.RoundUpToPowerOf2((uint)((maxKeys + CudaDeviceStep.SplitKeys - 1) / CudaDeviceStep.SplitKeys));
        int[] meta = new int[4 * layers * bucket];
        int[] tables = new int[layers * tableCapacity];
        for (int il = 0; il < layers; il++)
        {
            CudaDeviceStep.PackAttention(views[il], meta.AsSpan(4 * il * bucket, 4 * bucket), tables.AsSpan(il * tableCapacity, tableCapacity));
        }
        return new GraphInputs(slots, meta, tables, tableCapacity, splits);
    }
}
