namespace Distributed.Kernels.Cuda;

/// <summary>
/// Host↔device copies a <see cref="CudaKernelBackend"/> has issued since it was created (diagnostics: the worker's wire
/// path and its tests compare a request's copies and bytes before and after). Counted: the activation, index and pointer
/// uploads and result downloads of host-span calls and of <see cref="CudaWireBatch"/>, and the routed-expert metadata
/// of <see cref="CudaDeviceStep"/>; not counted: weight and constant uploads, and the device step's own activation
/// copies (<see cref="CudaDeviceStep.UploadedBytes"/>, <see cref="CudaDeviceStep.DownloadedBytes"/> report those).
/// Thread-safe.
/// </summary>
public sealed class CudaTransferCounters
{
    private long _h2dCopies;
    private long _h2dBytes;
    private long _d2hCopies;
    private long _d2hBytes;

    /// <summary>The totals now; subtract two snapshots for what happened in between.</summary>
    public CudaTransferTotals Snapshot() => new(Interlocked.Read(ref _h2dCopies), Interlocked.Read(ref _h2dBytes), Interlocked.Read(ref _d2hCopies),
        Interlocked.Read(ref _d2hBytes));

    internal void CountHostToDevice(long bytes)
    {
        Interlocked.Increment(ref _h2dCopies);
        Interlocked.Add(ref _h2dBytes, bytes);
    }

    internal void CountDeviceToHost(long bytes)
    {
        Interlocked.Increment(ref _d2hCopies);
        Interlocked.Add(ref _d2hBytes, bytes);
    }
}

/// <summary>Copy totals (<see cref="CudaTransferCounters.Snapshot"/>).</summary>
/// <param name="HostToDeviceCopies">cuMemcpyHtoDAsync calls.</param>
/// <param name="HostToDeviceBytes">Bytes they copied.</param>
/// <param name="DeviceToHostCopies">cuMemcpyDtoHAsync calls.</param>
/// <param name="DeviceToHostBytes">Bytes they copied.</param>
public readonly record struct CudaTransferTotals(long HostToDeviceCopies, long HostToDeviceBytes, long DeviceToHostCopies, long DeviceToHostBytes)
{
    /// <summary>The copies between <paramref name="before"/> and <paramref name="after"/>.</summary>
    public static CudaTransferTotals operator -(CudaTransferTotals after, CudaTransferTotals before) =>
        new(after.HostToDeviceCopies - before.HostToDeviceCopies, after.HostToDeviceBytes - before.HostToDeviceBytes,
            after.DeviceToHostCopies - before.DeviceToHostCopies, after.DeviceToHostBytes - before.DeviceToHostBytes);
}
