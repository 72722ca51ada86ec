using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// A bf16 weight in device memory, kept in its source layout (no transpose on upload); the GEMM picks op and leading
/// dimension from <see cref="Layout"/>. In cuBLAS's column-major terms, with <c>m = N</c> (OutFeatures), <c>k = K</c>:
/// <list type="bullet">
/// <item><see cref="WeightLayout.InOut"/> (row-major <c>[K, N]</c>) is a column-major <c>N×K</c> matrix with ld = N,
/// exactly <c>Wᵀ</c>: op N, lda = N.</item>
/// <item><see cref="WeightLayout.OutIn"/> (row-major <c>[N, K]</c>) is a column-major <c>K×N</c> matrix with ld = K:
/// op T, lda = K.</item>
/// </list>
/// </summary>
internal sealed class CudaWeightMatrix : IWeightMatrix
{
    internal CudaWeightMatrix(CudaKernelBackend owner, DeviceBuffer data, int inFeatures, int outFeatures, WeightLayout layout)
    {
        Owner = owner;
        Data = data;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Layout = layout;
    }

    public int InFeatures { get; }

    public int OutFeatures { get; }

    /// <summary>Device bytes: 2 · InFeatures · OutFeatures.</summary>
    public long ResidentBytes => Data.Bytes;

    public WeightLayout Layout { get; }

    internal CudaKernelBackend Owner { get; }

    internal DeviceBuffer Data { get; }

    /// <summary>The CUdeviceptr of the bf16 data; throws if the matrix was disposed.</summary>
    internal ulong Pointer => Data.IsClosed
        ? throw new ObjectDisposedException(nameof(CudaWeightMatrix))
        : Data.Pointer;

    /// <summary>cuBLAS op for A.</summary>
    internal int OpA => Layout == WeightLayout.InOut ? CuBlas.OpN : CuBlas.OpT;

    /// <summary>cuBLAS lda.</summary>
    internal int Lda => Layout == WeightLayout.InOut ? OutFeatures : InFeatures;

    public void Dispose() => Data.Dispose();
}
