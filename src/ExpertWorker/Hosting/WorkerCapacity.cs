using System.Globalization;
using Distributed.Kernels;
using Distributed.Protocol.Contracts;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>The placement capacity a worker reports (bytes of expert weights it may hold) and where it came from.</summary>
/// <param name="Bytes">Capacity, bytes.</param>
/// <param name="Source">How it was found, for the start-up log (e.g. <c>GPU 1: 80 GiB free − 0 reserved − … = …</c>).</param>
public sealed record WorkerCapacity(long Bytes, string Source)
{
    /// <summary>
    /// The capacity for <paramref name="options"/> on <paramref name="backend"/>: <c>--memory</c> when set; with a GPU
    /// backend <see cref="DeviceMemoryBudget.Capacity"/> of the device's free memory (measured now, after the backend
    /// started and before any expert is loaded), <see cref="ExpertWorkerOptions.DeviceReservedBytes"/>, the expert calls'
    /// workspace at <see cref="ExpertWorkerOptions.MaxRowsPerDispatch"/> rows ×
    /// <see cref="ExpertWorkerOptions.MaxConcurrentRequestsPerStream"/> calls, and
    /// <see cref="ExpertWorkerOptions.DeviceHeadroomBytes"/>; on the CPU the memory available to the process.
    /// </summary>
    /// <exception cref="Microsoft.Extensions.Options.OptionsValidationException">The GPU's measured capacity cannot hold one expert.</exception>
    public static WorkerCapacity Measure(ExpertWorkerOptions options, IKernelBackend backend, ModelDescriptor model)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return Measure(options, backend.Capabilities.DeviceOrdinal, backend.DeviceFreeBytes, model);
    }

    /// <summary>As <see cref="Measure(ExpertWorkerOptions, IKernelBackend, ModelDescriptor)"/> for a backend on device
    /// <paramref name="gpu"/> (-1: CPU) whose free memory <paramref name="deviceFreeBytes"/> reads.</summary>
    internal static WorkerCapacity Measure(ExpertWorkerOptions options, int gpu, Func<long> deviceFreeBytes, ModelDescriptor model)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(deviceFreeBytes);
        ArgumentNullException.ThrowIfNull(model);
        if (options.MemoryCapacityBytes > 0)
        {
            return new(options.MemoryCapacityBytes, "configured (--memory, ExpertWorker:MemoryCapacityBytes)");
        }
        if (gpu < 0)
        {
            return new(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "host memory available to the process (CPU backend)");
        }
        long free = deviceFreeBytes();
        long workspace = DeviceMemoryBudget.WorkerWorkspaceBytes(options.MaxRowsPerDispatch, options.MaxConcurrentRequestsPerStream, model.HiddenSize,
            model.IntermediateSize, model.ExpertFormat == ExpertWeightFormat.Fp8E4M3);
        long capacity = DeviceMemoryBudget.Capacity(free, options.DeviceReservedBytes, workspace, options.DeviceHeadroomBytes);
        string source = string.Create(CultureInfo.InvariantCulture,
            $"GPU {gpu}: {free} free - {options.DeviceReservedBytes} reserved - {workspace} workspace ({options.MaxConcurrentRequestsPerStream} calls of {options.MaxRowsPerDispatch} rows) - {options.DeviceHeadroomBytes} headroom");
        if (capacity < model.ExpertBytes)
        {
            throw new Microsoft.Extensions.Options.OptionsValidationException(ExpertWorkerOptions.SectionName, typeof(ExpertWorkerOptions),
                [string.Create(CultureInfo.InvariantCulture,
                    $"ExpertWorker:MemoryCapacityBytes: the measured capacity of {source} = {capacity} bytes cannot hold one expert ({model.ExpertBytes} bytes); free memory on the GPU, lower --max-rows (ExpertWorker:MaxRowsPerDispatch) or ExpertWorker:DeviceHeadroomBytes, or set --memory")]);
        }
        return new(capacity, source);
    }
}
