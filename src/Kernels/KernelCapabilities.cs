namespace Distributed.Kernels;

/// <summary>What a backend can do, logged once at startup.</summary>
/// <param name="Device">Human-readable device, e.g. <c>AMD EPYC (avx512, 2 threads)</c> or <c>NVIDIA H100 80GB HBM3</c>.</param>
/// <param name="Simd">Widest SIMD used on the CPU (<c>Vector512</c>, <c>Vector256</c>, <c>scalar</c>), or <c>n/a</c>.</param>
/// <param name="Threads">Worker threads the backend uses for one call.</param>
/// <param name="DeviceMemoryBytes">Total device memory (GPU), or 0 for the CPU backend.</param>
/// <param name="BatchInvariant">True when a row's result never depends on the other rows of the call.</param>
/// <param name="Numerics">
/// The arithmetic the backend computes in (<c>cpu-fp32</c>, <c>cpu-bf16</c>, <c>cuda-split</c>, <c>cuda-fast</c>): two
/// backends give the same results only when this matches (and, on CPU, bitwise so). Workers report it in their handshake.
/// </param>
/// <param name="DeviceOrdinal">The CUDA device ordinal the backend runs on (<c>--gpu N</c>, <c>Kernels:DeviceOrdinal</c>), or -1 for the CPU backend.</param>
public sealed record KernelCapabilities(string Device, string Simd, int Threads, long DeviceMemoryBytes, bool BatchInvariant, string Numerics = "unspecified",
    int DeviceOrdinal = -1);
