using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests;

[Trait("Category", "Unit")]
public sealed class DeviceMemoryBudgetTests
{
    private const long GiB = 1L << 30;

    [Fact]
    public void Capacity_IsFreeLessWeightsWorkspaceAndHeadroom()
    {
        Assert.Equal((80 * GiB) - (3 * GiB) - (4 * GiB) - (2 * GiB), DeviceMemoryBudget.Capacity(80 * GiB, 3 * GiB, 4 * GiB, 2 * GiB));
        Assert.Equal(80 * GiB, DeviceMemoryBudget.Capacity(80 * GiB, 0, 0, 0));
    }

    [Fact]
    public void Capacity_NeverNegative()
    {
        Assert.Equal(0, DeviceMemoryBudget.Capacity(GiB, GiB, 1, 0));
        Assert.Equal(0, DeviceMemoryBudget.Capacity(0, 0, 0, DeviceMemoryBudget.DefaultHeadroomBytes));
    }

    [Theory]
    [InlineData(-1, 0, 0, 0)]
    [InlineData(0, -1, 0, 0)]
    [InlineData(0, 0, -1, 0)]
    [InlineData(0, 0, 0, -1)]
    public void Capacity_NegativeArgument_Throws(long free, long weights, long workspace, long headroom)
        => Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMemoryBudget.Capacity(free, weights, workspace, headroom));

    [Fact]
    public void ExpertScratch_Bf16_CountsThePaddedLayout()
    {
        // 100 rows pad to at most 100 + 512 = 612 rows: rows·(8H + 4) + 612·(12H + 20I).
        Assert.Equal((100L * ((14 * 64) + 12)) + (612L * ((12 * 64) + (20 * 96))), DeviceMemoryBudget.ExpertScratchBytes(100, 64, 96, fp8Experts: false));
        // 4096 rows pad to at most 2 × 4096.
        Assert.Equal((4096L * ((14 * 5120) + 12)) + (8192L * ((12 * 5120) + (20 * 8192))), DeviceMemoryBudget.ExpertScratchBytes(4096, 5120, 8192, fp8Experts: false));
        Assert.Equal(0, DeviceMemoryBudget.ExpertScratchBytes(0, 5120, 8192, fp8Experts: false));
    }

    [Fact]
    public void ExpertScratch_Fp8_IsPerRow()
        => Assert.Equal(4096L * ((18 * 5120) + (16 * 8192) + 16), DeviceMemoryBudget.ExpertScratchBytes(4096, 5120, 8192, fp8Experts: true));

    [Fact]
    public void WorkerWorkspace_IsTwiceTheScratchPlusCublasPerCall()
    {
        long scratch = DeviceMemoryBudget.ExpertScratchBytes(256, 64, 96, fp8Experts: true);
        Assert.Equal(3 * ((2 * scratch) + (32L << 20)), DeviceMemoryBudget.WorkerWorkspaceBytes(256, 3, 64, 96, fp8Experts: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMemoryBudget.WorkerWorkspaceBytes(256, 0, 64, 96, fp8Experts: true));
    }

    [Fact]
    public void MostFree_SkipsWorkerGpus_TiesGoToTheLowestOrdinal()
    {
        var devices = new[]
        {
            new CudaDeviceMemory(0, "a", 70 * GiB, 80 * GiB),
            new CudaDeviceMemory(1, "b", 79 * GiB, 80 * GiB),
            new CudaDeviceMemory(2, "c", 75 * GiB, 80 * GiB),
            new CudaDeviceMemory(3, "d", 75 * GiB, 80 * GiB),
        };

        Assert.Equal(1, CudaDeviceChoice.MostFree(devices, [], out string why));
        Assert.Contains("device 1 has the most free memory", why, StringComparison.Ordinal);
        Assert.Equal(2, CudaDeviceChoice.MostFree(devices, [1], out _));
        Assert.Equal(0, CudaDeviceChoice.MostFree(devices, [1, 2, 3], out _));
    }

    [Fact]
    public void MostFree_EveryDeviceTaken_OrNone_IsDeviceZero()
    {
        Assert.Equal(0, CudaDeviceChoice.MostFree([new CudaDeviceMemory(0, "a", 1, 2), new CudaDeviceMemory(1, "b", 2, 2)], [0, 1], out string why));
        Assert.Contains("given to workers", why, StringComparison.Ordinal);
        Assert.Equal(0, CudaDeviceChoice.MostFree([], [], out _));
    }
}
