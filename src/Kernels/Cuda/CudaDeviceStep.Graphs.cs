using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// CUDA graphs on a device step (<see cref="CudaKernelBackend.TryBeginGraphStep"/>): the caller allocates every tensor
/// of the step at <see cref="GraphBucket"/> rows first (the same sizes in the same order each step, so they land at the
/// same addresses), uploads the step's varying data (embeddings, positions, KV slots, block tables) into those fixed
/// buffers, and wraps the work between host synchronizations in <see cref="Segment"/>s. The first step of a
/// <see cref="CudaGraphKey"/> runs its segments eagerly (warm-up: the scratch arena reaches its size, constants and
/// cuBLAS reach their steady state); the second captures each segment into a graph and launches it; later steps
/// replay the graphs. A segment must only queue device work on fixed buffers: no host staging, no download, no wait.
/// </summary>
public sealed unsafe partial class CudaDeviceStep
{
    private readonly CudaGraphCache? _graphs;
    private CudaGraphCache.GraphSet? _set;
    private bool _capture;
    private int _segment;

    internal CudaDeviceStep(CudaKernelBackend owner, CudaCallContext ctx, CudaGraphCache graphs, int bucket)
        : this(owner, ctx)
    {
        _graphs = graphs;
        GraphBucket = bucket;
    }

    /// <summary>Keys per attention split: a graph's attention launches cover <c>splits × SplitKeys</c> keys per row.</summary>
    public const int SplitKeys = CudaKernelModule.SplitKeys;

    /// <summary>Rows the step's graphs compute (the real rows padded up to a bucket); 0 on an ordinary step.</summary>
    public int GraphBucket { get; }

    /// <summary>Segments of this step that ran as a graph launch.</summary>
    public int GraphLaunches { get; private set; }

    /// <summary>Segments of this step that ran eagerly (warm-up, failed capture, or not a graph step).</summary>
    public int EagerSegments { get; private set; }

    /// <summary>
    /// Picks the graph set of this step: <paramref name="owner"/> (the model, by reference), <paramref name="store"/>,
    /// <see cref="GraphBucket"/>, <paramref name="splits"/> and <paramref name="tableCapacity"/> (see
    /// <see cref="CudaGraphKey"/>). Call once, after allocating the step's tensors and before the first segment.
    /// </summary>
    /// <exception cref="InvalidOperationException">Not a graph step, or called twice.</exception>
    public void BeginGraphs(object owner, IKvBlockStore store, int splits, int tableCapacity)
    {
        Check();
        ArgumentNullException.ThrowIfNull(owner);
        ArgumentNullException.ThrowIfNull(store);
        if (_graphs is null || _set is not null)
        {
            throw new InvalidOperationException(_graphs is null ? "not a graph step (TryBeginGraphStep)" : "BeginGraphs was already called");
        }
        Require(splits > 0 && tableCapacity > 0, $"splits and tableCapacity must be positive, got {splits}, {tableCapacity}", nameof(splits));
        _set = _graphs.Get(new CudaGraphKey(owner, store, GraphBucket, splits, tableCapacity));
        _capture = _set.Steps > 0;
        _set.Steps++;
    }

    /// <summary>
    /// Runs the next segment of the step: its graph when captured, else captured now and launched, else (warm-up, or a
    /// capture that failed: then it retries on a later step) <paramref name="issue"/> eagerly. <paramref name="issue"/>
    /// must queue the same work every step of the graph set; on an ordinary step it simply runs.
    /// </summary>
    public void Segment(Action issue)
    {
        Check();
        ArgumentNullException.ThrowIfNull(issue);
        if (_graphs is null || _set is null)
        {
            EagerSegments++;
            issue();
            return;
        }
        if (_graphs.RunSegment(_set, _capture, _segment++, issue))
        {
            GraphLaunches++;
        }
        else
        {
            EagerSegments++;
        }
    }

    /// <summary>Queues <c>destination[i] = 0</c> (fp32 zero bits) for every element.</summary>
    public void Zero(DeviceTensor destination)
    {
        Check();
        if (destination.Length > 0)
        {
            CuDriver.Check(CuDriver.cuMemsetD32Async(destination.Pointer, 0, (nuint)destination.Length, Stream), "cuMemsetD32Async");
        }
    }

    /// <summary>
    /// Queues a copy of <paramref name="source"/> into the first elements of <paramref name="destination"/> through the
    /// step's pinned arena (each call its own staging, valid until the step ends: no wait, unlike
    /// <see cref="Upload(ReadOnlySpan{float}, DeviceTensor)"/>). For the fixed input buffers of a graph step.
    /// </summary>
    public void UploadInto<T>(ReadOnlySpan<T> source, DeviceTensor destination)
        where T : unmanaged
    {
        Check();
        long bytes = (long)source.Length * sizeof(T);
        Require(bytes <= destination.Length * sizeof(float), $"{bytes} bytes do not fit the destination's {destination.Length * sizeof(float)}", nameof(destination));
        if (bytes == 0)
        {
            return;
        }
        ulong host = _ctx.Host.Alloc(bytes);
        source.CopyTo(new Span<T>((void*)host, source.Length));
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(destination.Pointer, (void*)host, (nuint)bytes, Stream), "cuMemcpyHtoDAsync_v2");
        UploadedBytes += bytes;
    }

    /// <summary>Positions already on the device in <paramref name="buffer"/> (uploaded with <see cref="UploadInto"/>), <paramref name="host"/> their values.</summary>
    public static DevicePositions PositionsAt(DeviceTensor buffer, int[] host)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (buffer.Length < host.Length)
        {
            throw new ArgumentException($"the buffer holds {buffer.Length} positions, not {host.Length}", nameof(buffer));
        }
        return new DevicePositions(buffer.Pointer, host);
    }

    /// <summary>
    /// Packs a batched attention's per-row data (see <see cref="AttentionPacked"/>): meta[4 r ..] = (keys, key start,
    /// first slot, table offset), rows past the sequences' get 0 keys (no key visible, output 0); the block tables
    /// concatenated into <paramref name="tables"/>. Returns the largest key count (≥ 1).
    /// </summary>
    public static int PackAttention(ReadOnlySpan<KvSequenceView> sequences, Span<int> meta, Span<int> tables) =>
        CudaKernelBackend.PackAttention(sequences, meta, tables);

    /// <summary>
    /// Writes device rows <paramref name="k"/>, <paramref name="v"/> (<c>[rows, RowWidth]</c>) to the slots in device
    /// <paramref name="slots"/> (int32 bits per element; a negative slot writes nothing), validated by the caller when uploaded.
    /// </summary>
    public void KvWrite(IKvBlockStore store, DeviceTensor slots, int rows, DeviceTensor k, DeviceTensor v)
    {
        Check();
        var s = _owner.OwnStore(store);
        long expected = (long)rows * s.RowWidth;
        Require(rows >= 0 && slots.Length >= rows, $"slots holds {slots.Length} entries, not {rows}", nameof(slots));
        Require(k.Length == expected && v.Length == expected, $"k and v must hold rows × RowWidth = {rows} × {s.RowWidth} floats, got {k.Length} and {v.Length}", nameof(k));
        if (rows > 0)
        {
            Module.KvScatter(Stream, s.DType, k.Pointer, v.Pointer, slots.Pointer, s.K.Pointer, s.V.Pointer, s.KScalePointer, s.VScalePointer, rows, s.RowWidth);
        }
    }

    /// <summary>
    /// The batched attention of <see cref="Attention(IKvBlockStore, DeviceTensor, DevicePositions, ReadOnlySpan{KvSequenceView}, in AttentionParams, DeviceTensor)"/>
    /// over per-row data already on the device (<see cref="PackAttention"/> uploaded into <paramref name="meta"/> and
    /// <paramref name="tables"/>) with <paramref name="splits"/> key splits, which must cover every row's keys (the caller
    /// validated the sequences when it packed them). Bitwise the same output for any such split count.
    /// </summary>
    public void AttentionPacked(IKvBlockStore store, DeviceTensor q, DevicePositions positions, DeviceTensor tables, DeviceTensor meta, int splits,
        in AttentionParams p, DeviceTensor output)
    {
        Check();
        var s = _owner.OwnStore(store);
        int rows = positions.Host.Length;
        long width = (long)p.Heads * p.HeadDim;
        Require(splits > 0, $"splits must be positive, got {splits}", nameof(splits));
        Require(q.Length == rows * width && output.Length == q.Length, $"q and output must hold {rows}×{width} floats, got {q.Length} and {output.Length}", nameof(q));
        Require(meta.Length >= 4L * rows && tables.Length > 0, $"meta holds {meta.Length} entries, not 4×{rows}", nameof(meta));
        if (rows > 0)
        {
            var mark = _ctx.Device.Mark();
            _owner.KvAttentionPacked(_ctx, s, q.Pointer, positions.Pointer, rows, tables.Pointer, meta.Pointer, splits, p, output.Pointer);
            _ctx.Device.Release(mark);
        }
    }
}
