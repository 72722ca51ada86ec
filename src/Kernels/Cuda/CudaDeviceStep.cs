using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// An fp32 tensor in the device memory of one <see cref="CudaDeviceStep"/>: <see cref="Length"/> floats, row-major,
/// valid until the step is disposed. Shapes are given per call, like the host spans of <see cref="IKernelBackend"/>.
/// </summary>
public readonly struct DeviceTensor
{
    internal DeviceTensor(ulong pointer, long length)
    {
        Pointer = pointer;
        Length = length;
    }

    internal ulong Pointer { get; }

    /// <summary>Elements (floats) of the tensor.</summary>
    public long Length { get; }

    /// <summary>Elements <c>[offset, offset + length)</c> as a tensor over the same memory.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the tensor.</exception>
    public DeviceTensor Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"slice [{offset}, {offset + length}) is outside the tensor's {Length} floats");
        }
        return new DeviceTensor(Pointer + (ulong)(offset * sizeof(float)), length);
    }
}

/// <summary>Absolute positions (one int per row) uploaded once for a <see cref="CudaDeviceStep"/>, with a host copy for validation.</summary>
public readonly struct DevicePositions
{
    internal DevicePositions(ulong pointer, int[] host)
    {
        Pointer = pointer;
        Host = host;
    }

    internal ulong Pointer { get; }

    /// <summary>The positions as uploaded.</summary>
    public ReadOnlyMemory<int> Host { get; }
}

/// <summary>
/// The device-resident path of <see cref="CudaKernelBackend"/>: one stream, one cuBLAS handle and one scratch arena held
/// for a whole forward step, with the ops of <see cref="IKernelBackend"/> on <see cref="DeviceTensor"/>s. Ops are queued
/// on the stream and return at once; only <see cref="Download"/>, the top-k calls, an upload whose staging is still in use and <see cref="Dispose"/> wait for
/// the device. Each op launches exactly the kernels (and cuBLAS calls) of its host-span counterpart with the same
/// <see cref="CudaBackendOptions.Precision"/>, so results equal the host-staged path's (bitwise when cuBLAS picks the same
/// algorithm for the same shapes, as it does run to run). Not thread-safe: one caller (the model's step) owns it.
/// </summary>
public sealed unsafe partial class CudaDeviceStep : IDisposable
{
    private readonly CudaKernelBackend _owner;
    private readonly CudaCallContext _ctx;
    private bool _disposed;
    private bool _stagingBusy;

    internal CudaDeviceStep(CudaKernelBackend owner, CudaCallContext ctx)
    {
        _owner = owner;
        _ctx = ctx;
    }

    private nint Stream => _ctx.Stream.Value;

    private CudaKernelModule Module => _owner.Module;

    /// <summary>
    /// Bytes copied host → device by this step so far through its own uploads (activations, positions, KV slots), for the
    /// traffic figures; the block tables each <see cref="Attention"/> call uploads are not counted.
    /// </summary>
    public long UploadedBytes { get; private set; }

    /// <summary>Times this step has waited for the device so far (each download; an upload that had to wait for the staging).</summary>
    public int Synchronizations { get; private set; }

    /// <summary>Bytes copied device → host by this step so far.</summary>
    public long DownloadedBytes { get; private set; }

    /// <summary>Uninitialised device memory for <paramref name="length"/> floats.</summary>
    public DeviceTensor Allocate(long length)
    {
        Check();
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return new DeviceTensor(_ctx.Device.Alloc(length * sizeof(float)), length);
    }

    /// <summary>Copies <paramref name="source"/> to new device memory (queued; the span may be reused at once).</summary>
    public DeviceTensor Upload(ReadOnlySpan<float> source)
    {
        Check();
        UploadedBytes += (long)source.Length * sizeof(float);
        return new DeviceTensor(CudaKernelBackend.Upload(_ctx, source), source.Length);
    }

    /// <summary>Uploads row positions (for <see cref="Rope"/> and <see cref="Attention"/>).</summary>
    /// <exception cref="ArgumentException">A negative position.</exception>
    public DevicePositions UploadPositions(ReadOnlySpan<int> positions)
    {
        Check();
        for (int i = 0; i < positions.Length; i++)
        {
            Require(positions[i] >= 0, $"positions[{i}] = {positions[i]} is negative", nameof(positions));
        }
        UploadedBytes += (long)positions.Length * sizeof(int);
        return new DevicePositions(CudaKernelBackend.Upload(_ctx, positions), positions.ToArray());
    }

    /// <summary>Waits for the queued work and copies <paramref name="source"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public void Download(DeviceTensor source, Span<float> destination)
    {
        Check();
        Require(source.Length == destination.Length, $"destination has {destination.Length} floats, the tensor {source.Length}", nameof(destination));
        DownloadedBytes += source.Length * sizeof(float);
        long bytes = source.Length * sizeof(float);
        if (bytes == 0)
        {
            return;
        }
        // The step's reusable staging, not the call arena: a step downloads every layer, and the arena would keep them all.
        nint staging = _ctx.Staging(bytes);
        CuDriver.Check(CuDriver.cuMemcpyDtoHAsync((void*)staging, source.Pointer, (nuint)bytes, Stream), "cuMemcpyDtoHAsync_v2");
        Synchronize();
        new ReadOnlySpan<float>((void*)staging, destination.Length).CopyTo(destination);
    }

    /// <summary>
    /// Copies <paramref name="source"/> into the existing device tensor <paramref name="destination"/> (queued) through the
    /// step's reusable staging; waits first if an earlier upload may still be reading it.
    /// </summary>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination)
    {
        Check();
        Require(source.Length == destination.Length, $"destination has {destination.Length} floats, the source {source.Length}", nameof(destination));
        long bytes = (long)source.Length * sizeof(float);
        if (bytes == 0)
        {
            return;
        }
        if (_stagingBusy)
        {
            Synchronize();
        }
        nint staging = _ctx.Staging(bytes);
        source.CopyTo(new Span<float>((void*)staging, source.Length));
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(destination.Pointer, (void*)staging, (nuint)bytes, Stream), "cuMemcpyHtoDAsync_v2");
        _stagingBusy = true;
        UploadedBytes += bytes;
    }

    /// <summary>Device → device copy of <paramref name="source"/> into <paramref name="destination"/> (same length).</summary>
    public void Copy(DeviceTensor source, DeviceTensor destination)
    {
        Check();
        Require(source.Length == destination.Length, $"destination has {destination.Length} floats, the source {source.Length}", nameof(destination));
        if (source.Length > 0)
        {
            CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(destination.Pointer, source.Pointer, (nuint)(source.Length * sizeof(float)), Stream), "cuMemcpyDtoDAsync_v2");
        }
    }

    /// <summary>
    /// <c>destination[r, c] = source[r, offset + c]</c> for <c>c &lt; cols</c>: columns <c>[offset, offset + cols)</c> of a
    /// <c>[rows, sourceCols]</c> matrix (the q, k and v parts of a fused projection). Exact.
    /// </summary>
    public void CopyColumns(DeviceTensor source, int rows, int sourceCols, int offset, int cols, DeviceTensor destination)
    {
        Check();
        Require(rows >= 0 && sourceCols > 0 && cols > 0 && offset >= 0 && offset + cols <= sourceCols,
            $"columns [{offset}, {offset + cols}) of {rows}×{sourceCols} are not a valid slice", nameof(offset));
        Require(source.Length == (long)rows * sourceCols, $"source has {source.Length} floats, expected {rows}×{sourceCols}", nameof(source));
        Require(destination.Length == (long)rows * cols, $"destination has {destination.Length} floats, expected {rows}×{cols}", nameof(destination));
        Module.CopyCols(Stream, source.Pointer + (ulong)offset * sizeof(float), sourceCols, destination.Pointer, rows, cols);
    }

    /// <summary>Rows <paramref name="rows"/> of <paramref name="source"/> <c>[*, cols]</c>, in that order, into <paramref name="destination"/>.</summary>
    public void GatherRows(DeviceTensor source, int cols, ReadOnlySpan<int> rows, DeviceTensor destination)
    {
        Check();
        Require(cols > 0 && source.Length % cols == 0, $"source has {source.Length} floats, not whole rows of {cols}", nameof(cols));
        Require(destination.Length == (long)rows.Length * cols, $"destination has {destination.Length} floats, expected {rows.Length}×{cols}", nameof(destination));
        long available = source.Length / cols;
        int i = 0;
        while (i < rows.Length)
        {
            Require((uint)rows[i] < available, $"row {rows[i]} is outside the source's {available} rows", nameof(rows));
            // Consecutive source rows go in one copy (a decode step selects every row).
            int run = 1;
            while (i + run < rows.Length && rows[i + run] == rows[i] + run && rows[i + run] < available)
            {
                run++;
            }
            Copy(source.Slice((long)rows[i] * cols, (long)run * cols), destination.Slice((long)i * cols, (long)run * cols));
            i += run;
        }
    }

    /// <summary><see cref="IKernelBackend.RmsNorm"/> on device rows; <paramref name="weight"/> (empty = none) is kept on the device once per array.</summary>
    public void RmsNorm(DeviceTensor x, int rows, int cols, float[] weight, float eps, DeviceTensor y)
    {
        Check();
        ArgumentNullException.ThrowIfNull(weight);
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(x.Length == (long)rows * cols, $"x has {x.Length} floats, expected {rows}×{cols}", nameof(x));
        Require(y.Length == x.Length, $"y has {y.Length} floats, expected {x.Length}", nameof(y));
        Require(weight.Length == 0 || weight.Length == cols, $"weight has {weight.Length} elements, expected {cols} or 0", nameof(weight));
        if (rows == 0)
        {
            return;
        }
        ulong w = weight.Length == 0 ? 0 : _owner.Constant(weight);
        Module.RmsNorm(Stream, x.Pointer, w, y.Pointer, rows, cols, eps, weight.Length != 0);
    }

    /// <summary><see cref="IKernelBackend.MatMul"/>: <c>y[rows, N] = x[rows, K] · W</c>, device in and out.</summary>
    public void MatMul(DeviceTensor x, int rows, IWeightMatrix w, DeviceTensor y)
    {
        Check();
        Require(rows >= 0, $"rows must be ≥ 0, got {rows}", nameof(rows));
        ArgumentNullException.ThrowIfNull(w);
        Require(x.Length == (long)rows * w.InFeatures, $"x has {x.Length} floats, expected rows×K = {rows}×{w.InFeatures}", nameof(x));
        Require(y.Length == (long)rows * w.OutFeatures, $"y has {y.Length} floats, expected rows×N = {rows}×{w.OutFeatures}", nameof(y));
        if (rows > 0)
        {
            var mark = _ctx.Device.Mark();
            _owner.MatMulOnDevice(_ctx, w, x.Pointer, rows, y.Pointer);
            _ctx.Device.Release(mark);
        }
    }

    /// <summary><see cref="IKernelBackend.SwiGluFfn"/> on device rows (bf16 or FP8 weights, as the host call accepts them).</summary>
    public void SwiGluFfn(DeviceTensor x, int rows, IWeightMatrix gateUp, IWeightMatrix down, DeviceTensor y)
    {
        Check();
        Require(rows >= 0, $"rows must be ≥ 0, got {rows}", nameof(rows));
        int hidden = _owner.FfnHiddenOf(gateUp, down);
        Require(x.Length == (long)rows * hidden, $"x has {x.Length} floats, expected rows×H = {rows}×{hidden}", nameof(x));
        Require(y.Length == x.Length, $"y has {y.Length} floats, expected {x.Length}", nameof(y));
        if (rows > 0)
        {
            var mark = _ctx.Device.Mark();
            _owner.SwiGluFfnOnDevice(_ctx, x.Pointer, rows, gateUp, down, y.Pointer);
            _ctx.Device.Release(mark);
        }
    }

    /// <summary><see cref="IKernelBackend.Rope"/> in place on device rows <c>[rows, heads, table.HeadDim]</c>.</summary>
    public void Rope(DeviceTensor x, int rows, int heads, DevicePositions positions, RopeTable table)
    {
        Check();
        ArgumentNullException.ThrowIfNull(table);
        Require(rows >= 0 && heads > 0, $"rows must be ≥ 0 and heads > 0, got {rows}, {heads}", nameof(rows));
        Require(x.Length == (long)rows * heads * table.HeadDim, $"x has {x.Length} floats, expected {rows}×{heads}×{table.HeadDim}", nameof(x));
        Require(positions.Host.Length == rows, $"positions has {positions.Host.Length} entries, expected {rows}", nameof(positions));
        if (rows > 0)
        {
            Module.Rope(Stream, x.Pointer, positions.Pointer, _owner.Constant(table.InvFreq), rows, heads, table.InvFreq.Length);
        }
    }

    /// <summary><c>x[r, c] *= factors[r]</c>, one fp32 multiply per element (attention temperature tuning); factors uploaded with <see cref="Upload(ReadOnlySpan{float})"/>.</summary>
    public void ScaleRows(DeviceTensor x, int rows, int cols, DeviceTensor factors)
    {
        Check();
        Require(rows >= 0 && cols > 0 && x.Length == (long)rows * cols, $"x has {x.Length} floats, expected {rows}×{cols}", nameof(x));
        Require(factors.Length == rows, $"factors has {factors.Length} entries, expected {rows}", nameof(factors));
        if (rows > 0)
        {
            Module.ScaleRows(Stream, x.Pointer, factors.Pointer, rows, cols);
        }
    }

    /// <summary><see cref="IKernelBackend.Add"/>: <c>dst[i] += src[i]</c>.</summary>
    public void Add(DeviceTensor dst, DeviceTensor src)
    {
        Check();
        Require(src.Length == dst.Length, $"dst ({dst.Length}) and src ({src.Length}) must have the same length", nameof(src));
        if (dst.Length > 0)
        {
            Module.AddInPlace(Stream, dst.Pointer, src.Pointer, dst.Length);
        }
    }

    /// <summary><see cref="IKernelBackend.TopK"/> on device scores; waits and returns ids and values on the host.</summary>
    public void TopK(DeviceTensor scores, int rows, int cols, int k, Span<int> ids, Span<float> values) =>
        TopK(scores, rows, cols, k, ids, values, default, []);

    /// <summary>
    /// <see cref="TopK(DeviceTensor, int, int, int, Span{int}, Span{float})"/> that also brings <paramref name="alongside"/>
    /// back into <paramref name="alongsideDestination"/> in the same wait (the MoE block: the routing and the rows to
    /// dispatch with one synchronization).
    /// </summary>
    public void TopK(DeviceTensor scores, int rows, int cols, int k, Span<int> ids, Span<float> values, DeviceTensor alongside, Span<float> alongsideDestination)
    {
        Check();
        Require(ids.Length == (long)rows * k && values.Length == (long)rows * k, $"ids and values need {rows}×{k} entries, got {ids.Length}, {values.Length}", nameof(ids));
        Require(alongside.Length == alongsideDestination.Length, $"alongsideDestination has {alongsideDestination.Length} floats, the tensor {alongside.Length}",
            nameof(alongsideDestination));
        if (rows == 0 && alongside.Length == 0)
        {
            return;
        }
        var mark = _ctx.Device.Mark();
        DeviceTensor di = Allocate(ids.Length), dv = Allocate(values.Length);
        TopKOnDevice(scores, rows, cols, k, di, dv);
        DownloadTopK(di, dv, ids, values, alongside, alongsideDestination);
        _ctx.Device.Release(mark);
    }

    /// <summary>
    /// Queues the top-k of each row of <paramref name="scores"/> into device <paramref name="ids"/> (int32 bits in each
    /// element) and <paramref name="values"/>, <c>[rows, k]</c> each: the kernel of <see cref="TopK(DeviceTensor, int, int, int, Span{int}, Span{float})"/>
    /// without the download (a graph segment ends with it).
    /// </summary>
    public void TopKOnDevice(DeviceTensor scores, int rows, int cols, int k, DeviceTensor ids, DeviceTensor values)
    {
        Check();
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(k >= 1 && k <= cols, $"k must be in [1, cols = {cols}], got {k}", nameof(k));
        Require(scores.Length == (long)rows * cols, $"scores has {scores.Length} floats, expected {rows}×{cols}", nameof(scores));
        Require(ids.Length >= (long)rows * k && values.Length >= (long)rows * k, $"ids and values need {rows}×{k} entries, got {ids.Length}, {values.Length}", nameof(ids));
        if (rows > 0)
        {
            Module.TopKRows(Stream, scores.Pointer, ids.Pointer, values.Pointer, rows, cols, k);
        }
    }

    /// <summary>
    /// Waits once and brings back the first <c>ids.Length</c> entries of device <paramref name="deviceIds"/> and
    /// <paramref name="deviceValues"/> (<see cref="TopKOnDevice"/>) and <paramref name="alongside"/>.
    /// </summary>
    public void DownloadTopK(DeviceTensor deviceIds, DeviceTensor deviceValues, Span<int> ids, Span<float> values, DeviceTensor alongside,
        Span<float> alongsideDestination)
    {
        Check();
        Require(ids.Length == values.Length && deviceIds.Length >= ids.Length && deviceValues.Length >= values.Length,
            $"{ids.Length} ids and {values.Length} values do not fit device tensors of {deviceIds.Length} and {deviceValues.Length}", nameof(ids));
        Require(alongside.Length == alongsideDestination.Length, $"alongsideDestination has {alongsideDestination.Length} floats, the tensor {alongside.Length}",
            nameof(alongsideDestination));
        nint hi = CudaKernelBackend.EnqueueDownload(_ctx, deviceIds.Pointer, ids.Length * 4L);
        nint hv = CudaKernelBackend.EnqueueDownload(_ctx, deviceValues.Pointer, values.Length * 4L);
        long bytes = alongside.Length * sizeof(float);
        nint staging = bytes > 0 ? _ctx.Staging(bytes) : 0;
        if (bytes > 0)
        {
            CuDriver.Check(CuDriver.cuMemcpyDtoHAsync((void*)staging, alongside.Pointer, (nuint)bytes, Stream), "cuMemcpyDtoHAsync_v2");
        }
        Synchronize();
        DownloadedBytes += 8L * ids.Length + bytes;
        new ReadOnlySpan<int>((void*)hi, ids.Length).CopyTo(ids);
        new ReadOnlySpan<float>((void*)hv, values.Length).CopyTo(values);
        if (bytes > 0)
        {
            new ReadOnlySpan<float>((void*)staging, alongsideDestination.Length).CopyTo(alongsideDestination);
        }
    }

    private void Synchronize()
    {
        _ctx.Stream.Synchronize();
        _stagingBusy = false;
        Synchronizations++;
    }

    /// <summary>
    /// Writes device rows <paramref name="k"/>, <paramref name="v"/> (<c>[slots, RowWidth]</c>) to <paramref name="slots"/> of
    /// <paramref name="store"/>, a store of this backend (<see cref="CudaKernelBackend.OwnsStore"/>), as <see cref="IKvBlockStore.Write"/> would.
    /// </summary>
    public void KvWrite(IKvBlockStore store, ReadOnlySpan<int> slots, DeviceTensor k, DeviceTensor v)
    {
        Check();
        var s = _owner.OwnStore(store);
        long expected = (long)slots.Length * s.RowWidth;
        Require(k.Length == expected && v.Length == expected, $"k and v must hold slots × RowWidth = {slots.Length} × {s.RowWidth} floats, got {k.Length} and {v.Length}", nameof(k));
        long storeRows = (long)s.Blocks * s.BlockSize;
        for (int i = 0; i < slots.Length; i++)
        {
            Require((uint)slots[i] < storeRows, $"slot {slots[i]} (entry {i}) is outside the store's {storeRows} rows", nameof(slots));
        }
        if (slots.Length > 0)
        {
            UploadedBytes += 4L * slots.Length;
            var mark = _ctx.Device.Mark();
            _owner.KvScatterOnDevice(_ctx, s, slots, k.Pointer, v.Pointer);
            _ctx.Device.Release(mark);
        }
    }

    /// <summary><see cref="IKvBlockStore.AttentionBatch"/> with device queries and output (same kernels and rounding).</summary>
    public void Attention(IKvBlockStore store, DeviceTensor q, DevicePositions positions, ReadOnlySpan<KvSequenceView> sequences, in AttentionParams p,
        DeviceTensor output)
    {
        Check();
        var s = _owner.OwnStore(store);
        KvBlockStores.ValidateAttentionBatch(s, q.Length, positions.Host.Span, sequences, p, output.Length);
        int rows = positions.Host.Length;
        if (rows > 0)
        {
            var mark = _ctx.Device.Mark();
            _owner.KvAttentionOnDevice(_ctx, s, q.Pointer, positions.Pointer, rows, sequences, p, output.Pointer);
            _ctx.Device.Release(mark);
        }
    }

    /// <summary>
    /// Waits for the queued work and returns the stream, scratch and handle to the backend's pool; a step that was not
    /// <see cref="Complete"/>d (an op threw) drops them instead, as a failed host-span call does.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        try
        {
            _ctx.Stream.Synchronize();
        }
        catch (CudaException)
        {
            _ctx.Completed = false;
        }
        if (_graphs is { } cache)
        {
            cache.Exit(_ctx.Completed);
        }
        else
        {
            _owner.Return(_ctx, _ctx.Completed);
        }
    }

    /// <summary>Marks the step's work as finished (call after the last download).</summary>
    public void Complete() => _ctx.Completed = true;

    private void Check() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static void Require(bool condition, string message, string parameter)
    {
        if (!condition)
        {
            throw new ArgumentException(message, parameter);
        }
    }
}
