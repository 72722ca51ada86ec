using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// FP8 E4M3 weights with per-output-channel scales: codes stay one byte per weight in device memory and the
/// dequantizing GEMM (<c>fp8_gemm</c> in kernels.cu) decodes them in shared memory. Activations are fp32 (no split:
/// the weights are exact in fp32 once decoded), and every output element is one fmaf chain in k order, so FP8 results
/// are batch invariant on the GPU too and equal the CPU backend's bit for bit (up to the SiLU, whose expf may differ
/// by an ulp).
/// </summary>
public sealed unsafe partial class CudaKernelBackend
{
    /// <inheritdoc />
    public IWeightMatrix CreateFp8Weight(ReadOnlySpan<byte> e4m3, ReadOnlySpan<float> scales, int inFeatures, int outFeatures, WeightLayout layout,
        Fp8ActivationMode activations)
    {
        Fp8E4M3.CheckWeight(e4m3, scales, inFeatures, outFeatures, layout, activations);
        ObjectDisposedException.ThrowIf(_disposed, this);
        // The kernel reads codes as [out, in] (each output column's k codes contiguous): an [in, out] source is transposed here.
        byte[]? transposed = null;
        if (layout == WeightLayout.InOut)
        {
            transposed = new byte[e4m3.Length];
            for (int k = 0; k < inFeatures; k++)
            {
                for (int n = 0; n < outFeatures; n++)
                {
                    transposed[((long)n * inFeatures) + k] = e4m3[(k * outFeatures) + n];
                }
            }
        }
        _context.SetCurrent();
        DeviceBuffer codes = DeviceBuffer.Allocate(_context.DangerousGetHandle(), e4m3.Length);
        DeviceBuffer? scaleBuffer = null;
        try
        {
            scaleBuffer = DeviceBuffer.Allocate(_context.DangerousGetHandle(), (long)outFeatures * sizeof(float));
            UploadChunked(codes, transposed is null ? e4m3 : transposed);
            UploadChunked(scaleBuffer, scales);
            return new CudaFp8WeightMatrix(this, codes, scaleBuffer, inFeatures, outFeatures, activations);
        }
        catch
        {
            codes.Dispose();
            scaleBuffer?.Dispose();
            throw;
        }
    }

    /// <summary>Copies <paramref name="source"/> to the start of <paramref name="data"/> through pinned staging, 32 MiB at a time.</summary>
    private void UploadChunked<T>(DeviceBuffer data, ReadOnlySpan<T> source)
        where T : unmanaged
    {
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        int chunkElements = (int)(WeightUploadChunkBytes / sizeof(T));
        ulong staging = ctx.Host.Alloc(WeightUploadChunkBytes);
        for (long offset = 0; offset < source.Length; offset += chunkElements)
        {
            int count = (int)Math.Min(chunkElements, source.Length - offset);
            source.Slice((int)offset, count).CopyTo(new Span<T>((void*)staging, count));
            CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(data.Pointer + (ulong)(offset * sizeof(T)), (void*)staging, (nuint)((long)count * sizeof(T)),
                ctx.Stream.Value), "cuMemcpyHtoDAsync_v2(weight)");
            // The staging buffer is reused by the next chunk.
            ctx.Stream.Synchronize();
        }
        call.Complete();
    }

    private CudaFp8WeightMatrix OwnFp8(IWeightMatrix w, string parameter)
    {
        ArgumentNullException.ThrowIfNull(w, parameter);
        if (w is not CudaFp8WeightMatrix f || !ReferenceEquals(f.Owner, this))
        {
            throw new ArgumentException($"{parameter} was not created by this CUDA backend ({w.GetType().Name})", parameter);
        }
        return f;
    }

    /// <summary>One FP8 GEMM stage on device rows: the W8A8 input pass when the weight asks for it, then the GEMM.</summary>
    private void Fp8Stage(CudaCallContext ctx, CudaFp8WeightMatrix w, ulong x, int rows, ulong y)
    {
        nint stream = ctx.Stream.Value;
        ulong input = x;
        ulong rowScales = 0;
        if (w.Activations == Fp8ActivationMode.PerTokenFp8)
        {
            input = ctx.Device.Alloc((long)rows * w.InFeatures * 4);
            rowScales = ctx.Device.Alloc((long)rows * 4);
            _module.Fp8QuantRows(stream, x, input, rowScales, rows, w.InFeatures);
        }
        _module.Fp8Gemm(stream, input, w.Codes, w.ScalePointer, rowScales, y, rows, w.InFeatures, w.OutFeatures);
    }

    // H of one group, checking that gate_up [H, 2I] and down [I, H] belong to this backend, agree, and are both FP8 or
    // both bf16.
    private int FfnHidden(IWeightMatrix gateUp, IWeightMatrix down, int g)
    {
        ArgumentNullException.ThrowIfNull(gateUp, $"gateUp[{g}]");
        ArgumentNullException.ThrowIfNull(down, $"down[{g}]");
        bool fp8 = gateUp is CudaFp8WeightMatrix;
        Require(fp8 == down is CudaFp8WeightMatrix, $"gateUp[{g}] and down[{g}] must both be FP8 or both bf16", nameof(down));
        IWeightMatrix gu = fp8 ? OwnFp8(gateUp, $"gateUp[{g}]") : Own(gateUp, $"gateUp[{g}]");
        IWeightMatrix dn = fp8 ? OwnFp8(down, $"down[{g}]") : Own(down, $"down[{g}]");
        Require(gu.OutFeatures % 2 == 0, $"gateUp[{g}] has odd width {gu.OutFeatures}; expected [H, 2I]", nameof(gateUp));
        int inter = gu.OutFeatures / 2;
        Require(dn.InFeatures == inter && dn.OutFeatures == gu.InFeatures,
            $"down[{g}] is [{dn.InFeatures}, {dn.OutFeatures}], expected [I, H] = [{inter}, {gu.InFeatures}]", nameof(down));
        return gu.InFeatures;
    }

    /// <summary>Queues the FP8 SwiGLU FFN on device x [rows, H] into device y [rows, H].</summary>
    private void RunFfnFp8OnDevice(CudaCallContext ctx, ulong dx, int rows, CudaFp8WeightMatrix gateUp, CudaFp8WeightMatrix down, ulong dy)
    {
        int inter = down.InFeatures;
        ulong t = ctx.Device.Alloc((long)rows * 2 * inter * 4);
        Fp8Stage(ctx, gateUp, dx, rows, t);
        ulong h = ctx.Device.Alloc((long)rows * inter * 4);
        _module.SwiGluF32(ctx.Stream.Value, t, h, rows, inter);
        Fp8Stage(ctx, down, h, rows, dy);
    }
}

/// <summary>
/// An FP8 weight in device memory: codes <c>[OutFeatures, InFeatures]</c> (one byte each; each output column's k codes
/// contiguous) and one fp32 scale per output column.
/// </summary>
internal sealed class CudaFp8WeightMatrix : IWeightMatrix
{
    private readonly DeviceBuffer _codes;
    private readonly DeviceBuffer _scales;

    internal CudaFp8WeightMatrix(CudaKernelBackend owner, DeviceBuffer codes, DeviceBuffer scales, int inFeatures, int outFeatures,
        Fp8ActivationMode activations)
    {
        Owner = owner;
        _codes = codes;
        _scales = scales;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Activations = activations;
    }

    public int InFeatures { get; }

    public int OutFeatures { get; }

    /// <summary>Device bytes: InFeatures · OutFeatures codes + 4 · OutFeatures scale bytes.</summary>
    public long ResidentBytes => _codes.Bytes + _scales.Bytes;

    public Fp8ActivationMode Activations { get; }

    internal CudaKernelBackend Owner { get; }

    /// <summary>CUdeviceptr of the codes; throws if disposed.</summary>
    internal ulong Codes => _codes.IsClosed ? throw new ObjectDisposedException(nameof(CudaFp8WeightMatrix)) : _codes.Pointer;

    /// <summary>CUdeviceptr of the scales; throws if disposed.</summary>
    internal ulong ScalePointer => _scales.IsClosed ? throw new ObjectDisposedException(nameof(CudaFp8WeightMatrix)) : _scales.Pointer;

    public void Dispose()
    {
        _codes.Dispose();
        _scales.Dispose();
    }
}
