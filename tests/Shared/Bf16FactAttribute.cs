using Distributed.Kernels.Cpu;

namespace Distributed.Tests.Shared;

/// <summary>
/// A fact that needs the CPU backend's bf16 matmul precision: skips, naming the reason, on a machine that cannot run it
/// (no AVX512-BF16, or not Linux on x86-64).
/// </summary>
internal sealed class Bf16FactAttribute : FactAttribute
{
    public Bf16FactAttribute()
    {
        if (CpuKernelBackend.Bf16Unavailable is { } why)
        {
            Skip = why;
        }
    }
}
