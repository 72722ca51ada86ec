using System.Globalization;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;

namespace Distributed.GpuCheck;

/// <summary>
/// One GPU per worker (issue #12): every device's ordinal and free memory, the capacity an expert worker on it would
/// report for Maverick-width experts (<see cref="DeviceMemoryBudget"/>, the worker's formula at its defaults), and a
/// backend on the last device reporting that device and its memory.
/// </summary>
internal static class DeviceChecks
{
    private const int MaverickHidden = 5120;
    private const int MaverickIntermediate = 8192;

    public static void Run(CheckReport report)
    {
        var devices = CudaKernelBackend.QueryDevices([], out string reason);
        if (devices.Count == 0)
        {
            report.Add(new CheckResult("Devices", "QueryDevices", CheckStatus.Fail, $"no device listed: {reason}", 0));
            return;
        }
        long fp8Expert = (3L * MaverickHidden * MaverickIntermediate) + (((2L * MaverickIntermediate) + MaverickHidden) * sizeof(float));
        long bf16Expert = 3L * MaverickHidden * MaverickIntermediate * 2;
        foreach (CudaDeviceMemory d in devices)
        {
            long fp8 = Capacity(d.FreeBytes, fp8Experts: true);
            long bf16 = Capacity(d.FreeBytes, fp8Experts: false);
            report.Info(string.Create(CultureInfo.InvariantCulture, $"GPU {d.Ordinal}"), string.Create(CultureInfo.InvariantCulture,
                $"{d.Name}: {d.FreeBytes / (double)(1L << 30):F2} of {d.TotalBytes / (double)(1L << 30):F2} GiB free; a worker there (--gpu {d.Ordinal}) reports " +
                $"{fp8} bytes = {fp8 / fp8Expert} Maverick FP8 experts, or {bf16} bytes = {bf16 / bf16Expert} bf16 experts"));
        }
        int last = devices.Count - 1;
        report.Check("Devices", string.Create(CultureInfo.InvariantCulture, $"backend on device {last} reports that device and its free memory"), () =>
        {
            using var gpu = new CudaKernelBackend(last);
            long free = gpu.DeviceFreeBytes();
            bool ok = gpu.Capabilities.DeviceOrdinal == last && gpu.Name.StartsWith($"cuda:{last} ", StringComparison.Ordinal)
                && free > 0 && free <= gpu.Capabilities.DeviceMemoryBytes;
            return (ok, string.Create(CultureInfo.InvariantCulture, $"{gpu.Name}: ordinal {gpu.Capabilities.DeviceOrdinal}, {free} of {gpu.Capabilities.DeviceMemoryBytes} bytes free"));
        });
    }

    private static long Capacity(long free, bool fp8Experts) => DeviceMemoryBudget.Capacity(free, 0,
        DeviceMemoryBudget.WorkerWorkspaceBytes(4096, 2, MaverickHidden, MaverickIntermediate, fp8Experts), DeviceMemoryBudget.DefaultHeadroomBytes);
}
