using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Unit")]
public sealed class KernelBackendFactoryTests
{
    [Fact]
    public void Cpu_CreatesCpuBackendAndLogsItOnce()
    {
        var log = new StringWriter();

        using IKernelBackend backend = KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cpu, Threads = 1 }, log);

        Assert.IsType<CpuKernelBackend>(backend);
        Assert.Equal(1, backend.Capabilities.Threads);
        string text = log.ToString();
        Assert.Single(text.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains($"backend {backend.Name} (requested)", text, StringComparison.Ordinal);
        Assert.Contains("batch invariant yes", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Auto_WithoutDevice_FallsBackToCpuAndLogsTheReason()
    {
        var log = new StringWriter();

        using IKernelBackend backend = KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Auto, Threads = 1 }, log);

        string? reason = CudaTestEnvironment.UnavailableReason;
        if (reason is null)
        {
            Assert.IsType<CudaKernelBackend>(backend);
            Assert.Contains("auto: CUDA device present", log.ToString(), StringComparison.Ordinal);
        }
        else
        {
            Assert.IsType<CpuKernelBackend>(backend);
            Assert.Contains("auto: CUDA unavailable, falling back to CPU", log.ToString(), StringComparison.Ordinal);
            Assert.Contains(reason, log.ToString(), StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Cuda_WithoutDevice_ThrowsCudaUnavailableNamingWhatIsMissing()
    {
        string? reason = CudaTestEnvironment.UnavailableReason;
        if (reason is null)
        {
            using IKernelBackend gpu = KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda }, null);
            Assert.IsType<CudaKernelBackend>(gpu);
            return;
        }

        var e = Assert.ThrowsAny<CudaUnavailableException>(() =>
            KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda }, TextWriter.Null));

        Assert.Equal(reason, e.Message);
        // Whatever is missing here (driver library, device, cuBLAS, NVRTC), the message names it.
        Assert.Matches("CUDA driver|cuInit|no device|cuBLAS|NVRTC|ordinal", e.Message);
    }

    [Fact]
    public void TryCreate_OrdinalOutOfRange_ReturnsFalseWithReason()
    {
        bool ok = CudaKernelBackend.TryCreate(1000, out CudaKernelBackend? backend, out string reason);

        Assert.False(ok);
        Assert.Null(backend);
        Assert.False(string.IsNullOrWhiteSpace(reason));
    }

    [Theory]
    [InlineData(KernelBackendKind.Cpu, -1, 0)]
    [InlineData(KernelBackendKind.Auto, 0, -1)]
    [InlineData((KernelBackendKind)42, 0, 0)]
    public void InvalidOptions_ThrowArgumentExceptionNamingTheSetting(KernelBackendKind kind, int threads, int ordinal)
    {
        var e = Assert.Throws<ArgumentException>(() =>
            KernelBackendFactory.Create(new KernelOptions { Backend = kind, Threads = threads, DeviceOrdinal = ordinal }, null));

        Assert.Contains("Kernels:", e.Message, StringComparison.Ordinal);
    }
}
