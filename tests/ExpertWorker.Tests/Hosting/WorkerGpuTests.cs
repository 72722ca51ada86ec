using Distributed.ExpertWorker.Hosting;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Contracts;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Tests.Hosting;

/// <summary><c>--gpu N</c> and the capacity a worker reports from its device's memory.</summary>
[Trait("Category", "Unit")]
public sealed class WorkerGpuTests
{
    private const long GiB = 1L << 30;
    private static readonly ModelDescriptor Model = new("fp", 64, 96, 4, 8, [1, 3]);

    [Fact]
    public void GpuDefaults_ShouldNotChange()
    {
        var o = new ExpertWorkerOptions();
        Assert.Null(o.Gpu);
        Assert.Equal(2 * GiB, o.DeviceHeadroomBytes);
        Assert.Equal(0, o.DeviceReservedBytes);
        Assert.Equal("ExpertWorker:Gpu", Program.Switches["--gpu"]);
    }

    [Fact]
    public async Task GpuWithCpuBackend_IsAConfigurationErrorNamingBoth()
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["ExpertWorker:ModelDirectory"] = "/nonexistent",
                ["ExpertWorker:KernelBackend"] = "Cpu",
                ["ExpertWorker:Gpu"] = "1",
            })
            .Build();

        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => WorkerHost.StartAsync(configuration));

        Assert.Contains("--gpu (ExpertWorker:Gpu) 1 needs a CUDA backend, but --backend cpu (ExpertWorker:KernelBackend)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void NegativeGpu_IsRefusedByTheValidator()
    {
        var result = new ExpertWorkerOptionsValidator().Validate(null, new ExpertWorkerOptions { ModelDirectory = "/m", Gpu = -1 });
        Assert.True(result.Failed);
        Assert.Contains("Gpu", result.FailureMessage, StringComparison.Ordinal);
    }

    [Fact]
    public void AutoWithGpu_UsesThatDevice_OrSaysTheSettingIsUnusedOnTheCpu_OrNamesTheDeviceCount()
    {
        var log = new StringWriter();
        int count = CudaKernelBackend.CountDevices(out _);
        var options = new ExpertWorkerOptions { ModelDirectory = "/m", KernelBackend = KernelBackendKind.Auto, KernelThreads = 1, Gpu = 1 };
        if (count is > 0 and < 2)
        {
            var e = Assert.Throws<OptionsValidationException>(() => WorkerHost.CreateBackend(options, log));
            Assert.Contains($"--gpu (ExpertWorker:Gpu) 1 is out of range: the CUDA driver reports {count} device(s)", e.Message, StringComparison.Ordinal);
            return;
        }

        using IKernelBackend backend = WorkerHost.CreateBackend(options, log);

        if (backend.Capabilities.DeviceOrdinal >= 0)
        {
            Assert.Equal(1, backend.Capabilities.DeviceOrdinal);
        }
        else
        {
            Assert.Contains("kernels: --gpu 1 (ExpertWorker:Gpu) is unused: no CUDA device is usable", log.ToString(), StringComparison.Ordinal);
        }
    }

    [Fact]
    public void CudaBackendWithoutDevice_IsAConfigurationError()
    {
        if (CudaKernelBackend.CountDevices(out _) > 0)
        {
            return; // A machine with a device runs the experts there; the refusal is what a machine without one gives.
        }
        var e = Assert.Throws<OptionsValidationException>(() =>
            WorkerHost.CreateBackend(new ExpertWorkerOptions { ModelDirectory = "/m", KernelBackend = KernelBackendKind.Cuda, Gpu = 0 }, TextWriter.Null));
        Assert.Contains("--backend cuda (ExpertWorker:KernelBackend) on device 0", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Capacity_OnAGpu_IsFreeMemoryLessReservedWorkspaceAndHeadroom()
    {
        var options = new ExpertWorkerOptions { ModelDirectory = "/m", MaxRowsPerDispatch = 512, DeviceReservedBytes = 3 * GiB, DeviceHeadroomBytes = GiB };
        long workspace = DeviceMemoryBudget.WorkerWorkspaceBytes(512, options.MaxConcurrentRequestsPerStream, 64, 96, fp8Experts: false);

        var capacity = WorkerCapacity.Measure(options, 1, () => 80 * GiB, Model);

        Assert.Equal((80 * GiB) - (3 * GiB) - workspace - GiB, capacity.Bytes);
        Assert.StartsWith($"GPU 1: {80 * GiB} free - {3 * GiB} reserved - {workspace} workspace", capacity.Source, StringComparison.Ordinal);
    }

    [Fact]
    public void Capacity_Fp8Experts_UseTheFp8Workspace()
    {
        var fp8 = Model with { ExpertFormat = ExpertWeightFormat.Fp8E4M3 };
        var options = new ExpertWorkerOptions { ModelDirectory = "/m" };
        long workspace = DeviceMemoryBudget.WorkerWorkspaceBytes(4096, 2, 64, 96, fp8Experts: true);

        Assert.Equal((10 * GiB) - workspace - (2 * GiB), WorkerCapacity.Measure(options, 0, () => 10 * GiB, fp8).Bytes);
    }

    [Fact]
    public void Capacity_MemoryOption_Overrides_AndTheCpuUsesHostMemory()
    {
        Assert.Equal(12345, WorkerCapacity.Measure(new ExpertWorkerOptions { MemoryCapacityBytes = 12345 }, 1, () => throw new InvalidOperationException("not read"), Model).Bytes);
        var cpu = WorkerCapacity.Measure(new ExpertWorkerOptions(), -1, () => throw new InvalidOperationException("not read"), Model);
        Assert.Equal(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, cpu.Bytes);
        Assert.Contains("host memory", cpu.Source, StringComparison.Ordinal);
    }

    [Fact]
    public void Capacity_GpuTooFullForOneExpert_IsAConfigurationErrorSayingWhatToChange()
    {
        var e = Assert.Throws<OptionsValidationException>(() => WorkerCapacity.Measure(new ExpertWorkerOptions(), 0, () => 2 * GiB, Model));
        Assert.Contains("cannot hold one expert", e.Message, StringComparison.Ordinal);
        Assert.Contains("--max-rows", e.Message, StringComparison.Ordinal);
    }
}
