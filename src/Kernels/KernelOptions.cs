namespace Distributed.Kernels;

/// <summary>Which backend to use.</summary>
public enum KernelBackendKind
{
    /// <summary>CUDA when a device and its libraries are present, else CPU.</summary>
    Auto = 0,
    /// <summary>The CPU backend.</summary>
    Cpu = 1,
    /// <summary>The CUDA backend; fails at startup with a clear message when no device is usable.</summary>
    Cuda = 2,
}

/// <summary>Kernel backend selection.</summary>
public sealed class KernelOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Kernels";

    /// <summary>Backend to use. Default: <see cref="KernelBackendKind.Cpu"/> for tests; hosts pass Auto.</summary>
    public KernelBackendKind Backend { get; set; } = KernelBackendKind.Cpu;

    /// <summary>CPU worker threads for one kernel call; 0 = <see cref="Environment.ProcessorCount"/>. Default: 0.</summary>
    public int Threads { get; set; }

    /// <summary>CUDA device ordinal. Default: 0.</summary>
    public int DeviceOrdinal { get; set; }
}
