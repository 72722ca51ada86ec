using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// A backend on a device other than 0, and the device memory it reports, on the emulator configured with three devices
/// of different sizes (<see cref="CudaTestEnvironment.ConfigureEmulator"/>). Skipped without the emulator.
/// </summary>
[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Gpu")]
public sealed class CudaDeviceSelectionTests
{
    private const long MiB = 1L << 20;

    [EmulatorFact]
    public void BackendOnDevice1_ReportsThatDeviceAndItsMemory()
    {
        CudaTestEnvironment.ConfigureEmulator(3, 4096, 6144, 8192);
        try
        {
            using var gpu = new CudaKernelBackend(1);

            Assert.Equal(1, gpu.Capabilities.DeviceOrdinal);
            Assert.StartsWith("cuda:1 ", gpu.Name, StringComparison.Ordinal);
            Assert.Equal(6144 * MiB, gpu.Capabilities.DeviceMemoryBytes);
            long before = gpu.DeviceFreeBytes();
            Assert.InRange(before, 6000 * MiB, 6144 * MiB);
            ushort[] w = TestData.Bf16(1024 * 512, 1, 0.1f);
            using (IWeightMatrix weight = gpu.CreateWeight(w, 1024, 512, WeightLayout.OutIn))
            {
                // The weight lives on device 1: its free memory drops by at least the weight's bytes.
                Assert.True(before - gpu.DeviceFreeBytes() >= weight.ResidentBytes, $"free {before} -> {gpu.DeviceFreeBytes()} after a {weight.ResidentBytes}-byte weight");
            }
            Assert.Equal(before, gpu.DeviceFreeBytes());

            var devices = CudaKernelBackend.QueryDevices([], out string reason);
            Assert.True(devices.Count == 3, reason);
            Assert.Equal([4096 * MiB, 6144 * MiB, 8192 * MiB], devices.Select(d => d.TotalBytes));
            Assert.Equal(2, CudaDeviceChoice.MostFree(devices, [], out _));
            Assert.Equal(1, CudaDeviceChoice.MostFree(devices, [2], out _));
            // Devices given to workers are not queried at all (no context is made on them).
            Assert.Equal([0, 2], CudaKernelBackend.QueryDevices([1], out _).Select(d => d.Ordinal));
        }
        finally
        {
            CudaTestEnvironment.ConfigureEmulator(-1);
        }
    }

    [EmulatorFact]
    public void OrdinalAtTheDeviceCount_IsRefusedNamingTheCount()
    {
        CudaTestEnvironment.ConfigureEmulator(2, 4096);
        try
        {
            Assert.Equal(2, CudaKernelBackend.CountDevices(out _));
            var e = Assert.Throws<CudaUnavailableException>(() => new CudaKernelBackend(2));
            Assert.Contains("ordinal 2 is out of range: 2 device(s)", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            CudaTestEnvironment.ConfigureEmulator(-1);
        }
    }
}
