using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// The expert worker's device path (issues #12 and #15): a request's wire rows go to the device as they arrived (bf16: 2
/// bytes a value, FP8: codes and row scales, fp32), are decoded and checked there, run through the grouped SwiGLU and come
/// back encoded in the reply's dtype, with one upload and one download (<see cref="CudaWireBatch"/>).
/// </summary>
public sealed unsafe partial class CudaKernelBackend
{
    private readonly CudaTransferCounters _transfers = new();

    /// <summary>Host↔device copies this backend has issued (diagnostics; see <see cref="CudaTransferCounters"/> for what is counted).</summary>
    public CudaTransferCounters Transfers => _transfers;

    /// <summary>
    /// Starts one request of <see cref="CudaWireBatch"/>: rents a call context (stream, cuBLAS handle, scratch) and a
    /// pinned staging buffer of <paramref name="payloadBytes"/> that the caller fills through <see cref="CudaWireBatch.Payload"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="payloadBytes"/> is negative.</exception>
    public CudaWireBatch BeginWireBatch(int payloadBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(payloadBytes);
        CudaCallContext ctx = Rent();
        try
        {
            return new CudaWireBatch(this, ctx, payloadBytes);
        }
        catch
        {
            Return(ctx, ok: false);
            throw;
        }
    }
}

/// <summary>
/// One worker request on the device: fill <see cref="Payload"/> with the request's wire rows (the one host copy: the
/// rows become this batch's private pinned copy, so a peer that still writes the source cannot change what is checked
/// and computed on), call <see cref="Run"/> once, read <see cref="Reply"/>, dispose. <see cref="Run"/> uploads the
/// payload bytes unchanged (one copy), decodes and checks every row in a kernel (<c>wire_decode_rows</c>: the arithmetic
/// and the refusals of the host's <c>WireCodec.TryDecodeFinite</c>), queues the grouped FFN
/// (<see cref="IKernelBackend.SwiGluFfnGrouped"/>'s device work, same kernels, same shapes), encodes the result to the
/// reply dtype on the device (bf16: round to nearest even, as <c>WireCodec.EncodeRows</c>) and downloads the reply and
/// the per-row verdicts in one copy. Results equal the host path's decode → <see cref="IKernelBackend.SwiGluFfnGrouped"/>
/// → encode bit for bit. Not thread-safe; one batch per request (concurrent requests each begin their own).
/// </summary>
public sealed unsafe class CudaWireBatch : IDisposable
{
    private readonly CudaKernelBackend _owner;
    private readonly CudaCallContext _ctx;
    private readonly nint _payload;
    private readonly int _payloadBytes;
    private nint _reply;
    private int _replyBytes;
    private bool _ran;
    private bool _disposed;

    internal CudaWireBatch(CudaKernelBackend owner, CudaCallContext ctx, int payloadBytes)
    {
        _owner = owner;
        _ctx = ctx;
        _payloadBytes = payloadBytes;
        _payload = (nint)ctx.Host.Alloc(payloadBytes);
    }

    /// <summary>The pinned staging the request's wire rows are copied into before <see cref="Run"/>; valid until disposal.</summary>
    public Span<byte> Payload
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return new Span<byte>((void*)_payload, _payloadBytes);
        }
    }

    /// <summary>The reply rows (<c>rows × hidden</c> values in the reply dtype) after <see cref="Run"/> returned -1; valid until disposal.</summary>
    /// <exception cref="InvalidOperationException"><see cref="Run"/> has not succeeded.</exception>
    public ReadOnlySpan<byte> Reply
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _ran && (_reply != 0 || _replyBytes == 0)
                ? new ReadOnlySpan<byte>((void*)_reply, _replyBytes)
                : throw new InvalidOperationException("the batch has not run successfully");
        }
    }

    /// <summary>
    /// Runs the request: <see cref="Payload"/> holds <c>Σ rowCounts</c> rows of <paramref name="hidden"/> values in
    /// <paramref name="rowFormat"/> (<see cref="DType.F32"/>, <see cref="DType.BF16"/>, or <see cref="DType.F8E4M3"/>: per
    /// row a little-endian fp32 scale then one code per value); rows <c>[offset_g, offset_g + rowCounts[g])</c> go through
    /// expert g. Returns -1 when every row was usable (<see cref="Reply"/> then holds the output rows in
    /// <paramref name="replyFormat"/>, <see cref="DType.F32"/> or <see cref="DType.BF16"/>, same row order), else the
    /// index of the first row the host decoder refuses (NaN/±Inf; FP8: a scale not finite and positive, a NaN code, an
    /// overflowing product); the experts still ran on the device but nothing of theirs is returned.
    /// </summary>
    /// <exception cref="ArgumentException">An unsupported format, a payload whose length is not the rows' size, or what
    /// <see cref="IKernelBackend.SwiGluFfnGrouped"/> refuses (weights, counts, shapes).</exception>
    /// <exception cref="InvalidOperationException">The batch already ran.</exception>
    public int Run(DType rowFormat, int hidden, ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp, IReadOnlyList<IWeightMatrix> down,
        DType replyFormat)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_ran)
        {
            throw new InvalidOperationException("a wire batch runs once");
        }
        int format = rowFormat switch
        {
            DType.F32 => 0,
            DType.BF16 => 1,
            DType.F8E4M3 => 2,
            _ => throw new ArgumentException($"row format {rowFormat} is not a wire dtype (F32, BF16 or F8E4M3)", nameof(rowFormat)),
        };
        if (replyFormat is not (DType.F32 or DType.BF16))
        {
            throw new ArgumentException($"reply format {replyFormat} is not a reply dtype (F32 or BF16)", nameof(replyFormat));
        }
        if (hidden <= 0)
        {
            throw new ArgumentException($"hidden must be positive, got {hidden}", nameof(hidden));
        }
        var plan = _owner.PlanFfn(rowCounts, gateUp, down);
        long rows = plan.Rows;
        if (rows > 0 && plan.Hidden != hidden)
        {
            throw new ArgumentException($"the experts have H = {plan.Hidden}, the rows {hidden}", nameof(hidden));
        }
        long rowBytes = format == 2 ? hidden + (long)Fp8E4M3Codec.RowScaleBytes : (long)hidden * DTypeInfo.SizeOf(rowFormat);
        if (_payloadBytes != rows * rowBytes)
        {
            throw new ArgumentException($"the payload holds {_payloadBytes} bytes, {rows} rows of {rowBytes} need {rows * rowBytes}", nameof(rowCounts));
        }
        _ran = true;
        long replyBytes = rows * hidden * DTypeInfo.SizeOf(replyFormat);
        _replyBytes = checked((int)replyBytes);
        if (rows == 0)
        {
            _ctx.Completed = true;
            return -1;
        }
        nint stream = _ctx.Stream.Value;
        CudaKernelModule module = _owner.Module;
        ulong src = _ctx.Device.Alloc(_payloadBytes);
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(src, (void*)_payload, (nuint)_payloadBytes, stream), "cuMemcpyHtoDAsync_v2(wire rows)");
        _ctx.Transfers?.CountHostToDevice(_payloadBytes);
        ulong x = _ctx.Device.Alloc(rows * hidden * 4);
        // One device region comes back: the reply bytes, then one int per row (1 = refused), 8-byte aligned.
        long flagsOffset = (replyBytes + 7) / 8 * 8;
        ulong region = _ctx.Device.Alloc(flagsOffset + rows * 4);
        module.WireDecodeRows(stream, src, x, region + (ulong)flagsOffset, rows, hidden, format);
        ulong y = replyFormat == DType.F32 ? region : _ctx.Device.Alloc(rows * hidden * 4);
        _owner.QueueFfn(_ctx, plan, x, y);
        if (replyFormat == DType.BF16)
        {
            module.WireEncodeBf16(stream, y, region, rows * hidden);
        }
        nint host = CudaKernelBackend.EnqueueDownload(_ctx, region, flagsOffset + rows * 4);
        _ctx.Stream.Synchronize();
        _ctx.Completed = true;
        var verdicts = new ReadOnlySpan<int>((void*)(host + (nint)flagsOffset), (int)rows);
        int bad = verdicts.IndexOfAnyExcept(0);
        if (bad < 0)
        {
            _reply = host;
        }
        return bad;
    }

    /// <summary>Returns the call context to the backend's pool (dropped when the run failed part-way).</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _owner.Return(_ctx, _ctx.Completed || !_ran);
    }
}
