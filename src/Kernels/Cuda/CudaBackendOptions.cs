namespace Distributed.Kernels.Cuda;

/// <summary>How the CUDA backend feeds fp32 activations to its bf16 GEMMs.</summary>
public enum CudaPrecision
{
    /// <summary>
    /// Each fp32 activation row x is split into two bf16 rows, hi = bf16(x) and lo = bf16(x − hi), both go through one
    /// bf16 GEMM with fp32 accumulation, and the two output rows are added: x·W to about 2⁻¹⁶ relative error, close
    /// to the CPU backend's fp32 activations (the golden fixtures' 2e-3 logit tolerance holds). The weights are read
    /// once, so a small-batch (memory-bound) GEMM costs about the same as <see cref="Fast"/>; a large one costs 2×.
    /// </summary>
    Split = 0,

    /// <summary>Activations rounded to bf16 once: one bf16 GEMM; logits differ from fp32 by ~1e-2.</summary>
    Fast = 1,
}

/// <summary>How <see cref="CudaKernelBackend.SwiGluFfnGrouped"/> runs its per-expert GEMMs.</summary>
public enum CudaGroupedGemm
{
    /// <summary>
    /// <see cref="Grouped"/> when the loaded cuBLAS has it and it passed the start-up probe (cuBLAS 12.5–13.0 documents
    /// no bf16-in/fp32-out combination for it, so the probe normally fails), else <see cref="PaddedBatched"/>.
    /// </summary>
    Auto = 0,

    /// <summary>One <c>cublasGemmGroupedBatchedEx</c> per stage (cuBLAS ≥ 12.5).</summary>
    Grouped = 1,

    /// <summary>One <c>cublasGemmEx</c> per non-empty group, all on the call's stream.</summary>
    PerGroup = 2,

    /// <summary>
    /// One pointer-array <c>cublasGemmBatchedEx</c> per stage over the groups padded to the largest group's row count
    /// (the padding rows are computed and discarded), used when all groups share a weight layout and the padded row count
    /// is at most max(2·rows, rows + 512); otherwise <see cref="PerGroup"/>.
    /// </summary>
    PaddedBatched = 3,
}

/// <summary>Tuning of <see cref="CudaKernelBackend"/>.</summary>
public sealed class CudaBackendOptions
{
    /// <summary>Activation precision of the GEMMs. Default: <see cref="CudaPrecision.Split"/>.</summary>
    public CudaPrecision Precision { get; init; } = CudaPrecision.Split;

    /// <summary>Grouped expert GEMM path. Default: <see cref="CudaGroupedGemm.Auto"/>.</summary>
    public CudaGroupedGemm GroupedGemm { get; init; } = CudaGroupedGemm.Auto;

    /// <summary>
    /// Most device scratch one attention launch may use for its probabilities (query rows are processed in slices
    /// of at most this many <c>heads × keys × 4</c> bytes). Default: 64 MiB.
    /// </summary>
    public long AttentionScratchBytes { get; init; } = 64L << 20;

    /// <summary>
    /// Let the model run whole forward steps on the device (<see cref="CudaKernelBackend.BeginDeviceStep"/>) when its KV
    /// cache is a device store of this backend: activations stay in device memory between ops. False: the model calls
    /// the host-span ops, each staging through pinned memory and synchronizing. Default: true.
    /// </summary>
    public bool DevicePath { get; init; } = true;

    /// <summary>
    /// On the device path, capture the parts of a step between host synchronizations as CUDA graphs, one set per row
    /// bucket (<see cref="CudaKernelBackend.GraphBuckets"/>), and replay them on later steps: one launch per segment
    /// instead of one per kernel. Padded rows compute on zeros and never touch a real sequence's keys. Default: false
    /// (not yet measured on a GPU).
    /// </summary>
    public bool CudaGraphs { get; init; }
}

/// <summary>The device a <see cref="CudaKernelBackend"/> runs on and the library versions it loaded.</summary>
/// <param name="Ordinal">CUDA device ordinal.</param>
/// <param name="Name">Device name, e.g. <c>NVIDIA H100 80GB HBM3</c>.</param>
/// <param name="ComputeCapabilityMajor">Compute capability major (9 on Hopper).</param>
/// <param name="ComputeCapabilityMinor">Compute capability minor.</param>
/// <param name="TotalMemoryBytes">Device memory in bytes.</param>
/// <param name="MultiprocessorCount">Streaming multiprocessors.</param>
/// <param name="DriverVersion">CUDA version the driver supports, as major·1000 + minor·10 (13000 = 13.0).</param>
/// <param name="CublasVersion">cuBLAS version as reported by <c>cublasGetVersion</c> (e.g. 130001).</param>
/// <param name="NvrtcVersion">NVRTC version, <c>major.minor</c>.</param>
/// <param name="KernelImage">What NVRTC produced and the driver loaded, e.g. <c>cubin sm_90</c>.</param>
/// <param name="DriverLibrary">Where libcuda was loaded from.</param>
/// <param name="CublasLibrary">Where libcublas was loaded from.</param>
/// <param name="NvrtcLibrary">Where libnvrtc was loaded from.</param>
public sealed record CudaDeviceInfo(int Ordinal, string Name, int ComputeCapabilityMajor, int ComputeCapabilityMinor,
    long TotalMemoryBytes, int MultiprocessorCount, int DriverVersion, int CublasVersion, string NvrtcVersion,
    string KernelImage, string DriverLibrary, string CublasLibrary, string NvrtcLibrary);

/// <summary>One CUDA device's memory as <see cref="CudaKernelBackend.QueryDevices"/> found it.</summary>
/// <param name="Ordinal">CUDA device ordinal (what <c>--gpu</c> takes).</param>
/// <param name="Name">Device name.</param>
/// <param name="FreeBytes">Free memory at the query, bytes (<c>cuMemGetInfo</c>).</param>
/// <param name="TotalBytes">Total memory, bytes.</param>
public sealed record CudaDeviceMemory(int Ordinal, string Name, long FreeBytes, long TotalBytes);
