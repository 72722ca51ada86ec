using System.Globalization;

namespace Distributed.Kernels.Cuda;

/// <summary>Picks a process's CUDA device when none was configured (the coordinator's default device).</summary>
public static class CudaDeviceChoice
{
    /// <summary>
    /// The device with the most free memory among <paramref name="devices"/> not in <paramref name="taken"/> (the
    /// GPUs given to local workers); ties go to the lowest ordinal. When every listed device is taken, or none is listed
    /// (e.g. <see cref="CudaKernelBackend.QueryDevices"/> skipped them all), 0.
    /// </summary>
    /// <param name="devices">Every device with its free memory (<see cref="CudaKernelBackend.QueryDevices"/>).</param>
    /// <param name="taken">Ordinals other processes of this launch use.</param>
    /// <param name="why">One line for the start-up log saying why this device.</param>
    public static int MostFree(IReadOnlyList<CudaDeviceMemory> devices, IReadOnlyCollection<int> taken, out string why)
    {
        ArgumentNullException.ThrowIfNull(devices);
        ArgumentNullException.ThrowIfNull(taken);
        CudaDeviceMemory? best = null;
        foreach (CudaDeviceMemory d in devices)
        {
            if (!taken.Contains(d.Ordinal) && (best is null || d.FreeBytes > best.FreeBytes || (d.FreeBytes == best.FreeBytes && d.Ordinal < best.Ordinal)))
            {
                best = d;
            }
        }
        if (best is null)
        {
            why = devices.Count == 0
                ? "no free device listed (every device is given to workers, or none is present): device 0"
                : string.Create(CultureInfo.InvariantCulture, $"all {devices.Count} device(s) are given to workers: device 0, shared");
            return 0;
        }
        why = string.Create(CultureInfo.InvariantCulture,
            $"device {best.Ordinal} has the most free memory ({best.FreeBytes} of {best.TotalBytes} bytes) of the {devices.Count(d => !taken.Contains(d.Ordinal))} not given to workers");
        return best.Ordinal;
    }
}
