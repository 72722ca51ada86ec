using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// Tests that touch CUDA library resolution (process-wide: loaded libraries are cached and the search path comes from an
/// environment variable) run in this one collection, never in parallel with each other.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CudaTestEnvironment
{
    public const string Name = "CUDA environment";

    private static readonly Lazy<string?> s_unavailable = new(() =>
    {
        if (!CudaKernelBackend.TryCreate(0, out CudaKernelBackend? backend, out string reason))
        {
            return reason;
        }
        backend!.Dispose();
        return null;
    });

    private static readonly Lazy<nint> s_emulatorConfigure = new(() =>
    {
        if (UnavailableReason is not null || Distributed.Kernels.Cuda.Interop.CudaLibraries.LoadedPath(Distributed.Kernels.Cuda.Interop.CudaLibraries.Driver) is not { } path)
        {
            return 0;
        }
        nint library = System.Runtime.InteropServices.NativeLibrary.Load(path);
        return System.Runtime.InteropServices.NativeLibrary.TryGetExport(library, "fake_cuda_configure", out nint f) ? f : 0;
    });

    /// <summary>Why no CUDA backend can be created here, or null when one can.</summary>
    public static string? UnavailableReason => s_unavailable.Value;

    /// <summary>Why the CUDA emulator's test controls are not available (a real driver, or no CUDA at all), or null.</summary>
    public static string? NoEmulatorReason => UnavailableReason is { } reason
        ? $"needs the CUDA emulator: {reason}"
        : s_emulatorConfigure.Value == 0 ? "needs the CUDA emulator (tests/Kernels.Tests/Cuda/Emulator): the loaded driver is a real one" : null;

    /// <summary>
    /// Emulator only: sets the device count and each device's total memory in MiB (the last value repeating);
    /// <paramref name="devices"/> -1 goes back to the environment's configuration (<c>FAKE_CUDA_DEVICES</c>,
    /// <c>FAKE_CUDA_MEMORY_MIB</c>).
    /// </summary>
    public static unsafe void ConfigureEmulator(int devices, params ulong[] totalsMiB)
    {
        var configure = (delegate* unmanaged<int, ulong*, int, int>)s_emulatorConfigure.Value;
        if (configure == null)
        {
            throw new InvalidOperationException(NoEmulatorReason);
        }
        fixed (ulong* totals = totalsMiB)
        {
            int result = configure(devices, totals, totalsMiB.Length);
            if (result != 0)
            {
                throw new InvalidOperationException($"fake_cuda_configure({devices}) returned {result}");
            }
        }
    }

    /// <summary>The folder holding Distributed.sln.</summary>
    public static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"Distributed.sln not found above {AppContext.BaseDirectory}");
    }
}

/// <summary>
/// A fact that needs a usable CUDA device: skipped (never passed) when <see cref="CudaKernelBackend.TryCreate(int, out CudaKernelBackend?, out string)"/>
/// fails, with the reason naming what is missing (driver library, device, cuBLAS, NVRTC).
/// </summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        string? reason = CudaTestEnvironment.UnavailableReason;
        if (reason is not null)
        {
            Skip = $"needs a CUDA device: {reason}";
        }
    }
}

/// <summary>A fact that needs the CUDA emulator's test controls (<see cref="CudaTestEnvironment.ConfigureEmulator"/>); skipped with the reason otherwise.</summary>
public sealed class EmulatorFactAttribute : FactAttribute
{
    public EmulatorFactAttribute()
    {
        string? reason = CudaTestEnvironment.NoEmulatorReason;
        if (reason is not null)
        {
            Skip = reason;
        }
    }
}
