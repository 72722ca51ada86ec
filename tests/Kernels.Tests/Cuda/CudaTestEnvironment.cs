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

    /// <summary>Why no CUDA backend can be created here, or null when one can.</summary>
    public static string? UnavailableReason => s_unavailable.Value;

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
