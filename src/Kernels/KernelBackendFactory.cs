using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.Kernels;

/// <summary>Creates the kernel backend a host asked for in <see cref="KernelOptions"/> and logs the choice once.</summary>
public static class KernelBackendFactory
{
    /// <summary>
    /// Creates the backend:
    /// <see cref="KernelBackendKind.Cpu"/> → <see cref="CpuKernelBackend"/> with <see cref="KernelOptions.Threads"/>;
    /// <see cref="KernelBackendKind.Cuda"/> → <see cref="CudaKernelBackend"/> on <see cref="KernelOptions.DeviceOrdinal"/>,
    /// or an exception saying why CUDA is unusable;
    /// <see cref="KernelBackendKind.Auto"/> → CUDA when a device and its libraries are usable, else CPU (the reason
    /// for falling back is logged).
    /// </summary>
    /// <param name="options">The selection; validated here.</param>
    /// <param name="log">Receives one line naming the chosen backend and its capabilities (and the fallback reason); may be null.</param>
    /// <exception cref="ArgumentException">Unknown backend kind, negative thread count or device ordinal.</exception>
    /// <exception cref="CudaUnavailableException">CUDA was requested explicitly and is not usable.</exception>
    /// <exception cref="PlatformNotSupportedException">The CPU backend was chosen with <see cref="CpuMatMulPrecision.Bf16"/> on a CPU without AVX512-BF16.</exception>
    public static IKernelBackend Create(KernelOptions options, TextWriter? log)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Threads < 0)
        {
            throw new ArgumentException($"Kernels:Threads must be ≥ 0, got {options.Threads}", nameof(options));
        }
        if (options.DeviceOrdinal < 0)
        {
            throw new ArgumentException($"Kernels:DeviceOrdinal must be ≥ 0, got {options.DeviceOrdinal}", nameof(options));
        }
        if (!Enum.IsDefined(options.CpuPrecision))
        {
            throw new ArgumentException($"Kernels:CpuPrecision has unknown value {(int)options.CpuPrecision} (fp32 or bf16)", nameof(options));
        }
        IKernelBackend backend;
        switch (options.Backend)
        {
            case KernelBackendKind.Cpu:
                backend = new CpuKernelBackend(options.Threads, options.CpuPrecision);
                Log(log, backend, "requested");
                return backend;
            case KernelBackendKind.Cuda:
                var cuda = new CudaKernelBackend(options.DeviceOrdinal, CudaOptions(options));
                Log(log, cuda, "requested");
                log?.WriteLine($"kernels: {cuda.Describe()}");
                return cuda;
            case KernelBackendKind.Auto:
                if (CudaKernelBackend.TryCreate(options.DeviceOrdinal, CudaOptions(options), out CudaKernelBackend? gpu, out string reason) && gpu is not null)
                {
                    Log(log, gpu, "auto: CUDA device present");
                    log?.WriteLine($"kernels: {gpu.Describe()}");
                    return gpu;
                }
                backend = new CpuKernelBackend(options.Threads, options.CpuPrecision);
                Log(log, backend, $"auto: CUDA unavailable, falling back to CPU: {reason}");
                return backend;
            default:
                throw new ArgumentException($"Kernels:Backend has unknown value {(int)options.Backend}", nameof(options));
        }
    }

    private static CudaBackendOptions CudaOptions(KernelOptions options) => new() { DevicePath = options.DevicePath, CudaGraphs = options.CudaGraphs };

    private static void Log(TextWriter? log, IKernelBackend backend, string why)
    {
        KernelCapabilities c = backend.Capabilities;
        log?.WriteLine($"kernels: backend {backend.Name} ({why}); device {c.Device}, simd {c.Simd}, threads {c.Threads}, " +
            $"device memory {c.DeviceMemoryBytes} bytes, batch invariant {(c.BatchInvariant ? "yes" : "no")}, numerics {c.Numerics}");
    }
}
