using System.Runtime.Intrinsics;

namespace Distributed.Kernels.Cpu;

/// <summary>The vector width a <see cref="CpuKernelBackend"/> runs its kernels with.</summary>
internal enum SimdLevel
{
    /// <summary>Scalar code (MathF.FusedMultiplyAdd keeps matmul results identical to the vector paths' per-lane math).</summary>
    Scalar = 0,
    /// <summary>Vector256 (AVX2 + FMA).</summary>
    Vector256 = 1,
    /// <summary>Vector512 (AVX-512F).</summary>
    Vector512 = 2,
}

internal static class SimdLevels
{
    /// <summary>The widest level this machine accelerates.</summary>
    public static SimdLevel Detect() =>
        Vector512.IsHardwareAccelerated ? SimdLevel.Vector512
        : Vector256.IsHardwareAccelerated ? SimdLevel.Vector256
        : SimdLevel.Scalar;

    /// <summary>Short name used in the backend name: <c>avx512</c>, <c>avx2</c>, <c>scalar</c>.</summary>
    public static string ShortName(SimdLevel level) => level switch
    {
        SimdLevel.Vector512 => "avx512",
        SimdLevel.Vector256 => "avx2",
        _ => "scalar",
    };

    /// <summary>Name of the vector type, as <see cref="KernelCapabilities.Simd"/> reports it.</summary>
    public static string TypeName(SimdLevel level) => level switch
    {
        SimdLevel.Vector512 => "Vector512",
        SimdLevel.Vector256 => "Vector256",
        _ => "scalar",
    };
}
