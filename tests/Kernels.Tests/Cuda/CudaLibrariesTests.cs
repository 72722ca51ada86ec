using Distributed.Kernels.Cuda;
using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Tests.Cuda;

[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Unit")]
public sealed class CudaLibrariesTests
{
    [Fact]
    public void TryLoadFirst_NoCandidateExists_FailsWithTheLoaderMessageNamingTheFile()
    {
        string missing = "libdistributed-missing-cublas.so.99";
        bool ok = CudaLibraries.TryLoadFirst([missing], ["/nonexistent/distributed/lib64"], out nint handle, out string path, out string error);

        Assert.False(ok);
        Assert.Equal(0, handle);
        Assert.Equal("", path);
        Assert.Contains(missing, error, StringComparison.Ordinal);
    }

    [Fact]
    public void NotFoundException_Message_NamesLibraryFileNamesFoldersAndOverride()
    {
        var e = new CudaLibraryNotFoundException("cuBLAS", ["libcublas.so.13", "libcublas.so.12"], ["/usr/local/cuda/lib64", "/opt/x/nvidia/cu13/lib"],
            "libcublas.so.13: cannot open shared object file");

        Assert.Contains("cuBLAS library not found", e.Message, StringComparison.Ordinal);
        Assert.Contains("libcublas.so.13, libcublas.so.12", e.Message, StringComparison.Ordinal);
        Assert.Contains("/usr/local/cuda/lib64, /opt/x/nvidia/cu13/lib", e.Message, StringComparison.Ordinal);
        Assert.Contains(CudaLibraries.SearchPathVariable, e.Message, StringComparison.Ordinal);
        Assert.Contains("cannot open shared object file", e.Message, StringComparison.Ordinal);
        Assert.IsAssignableFrom<CudaUnavailableException>(e);
    }

    [Fact]
    public void CandidateNames_CoverCuda13And12_NewestFirst()
    {
        Assert.Equal(["libcublas.so.13", "libcublas.so.12", "libcublas.so"], CudaLibraries.Cublas.FileNames);
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], CudaLibraries.Nvrtc.FileNames);
        Assert.Equal("libcuda.so.1", CudaLibraries.Driver.FileNames[0]);
        Assert.Contains("/usr/local/cuda/lib64", CudaLibraries.DefaultFolderPatterns);
        Assert.Contains("/usr/local/cuda/targets/x86_64-linux/lib", CudaLibraries.DefaultFolderPatterns);
        Assert.Contains("/usr/local/lib/python3*/dist-packages/nvidia/*/lib", CudaLibraries.DefaultFolderPatterns);
        Assert.Contains("/usr/lib/python3*/dist-packages/nvidia/*/lib", CudaLibraries.DefaultFolderPatterns);
    }

    [Fact]
    public void ExpandGlob_WildcardSegments_MatchExistingFoldersNewestFirst()
    {
        string root = Directory.CreateTempSubdirectory("cuda-glob-").FullName;
        try
        {
            foreach (string d in new[] { "python3.11/site-packages/nvidia/cublas/lib", "python3.12/site-packages/nvidia/cu13/lib",
                "python3.12/site-packages/nvidia/nvrtc/lib", "python3.12/site-packages/nvidia/empty" })
            {
                Directory.CreateDirectory(Path.Combine(root, d));
            }

            IReadOnlyList<string> found = CudaLibraries.ExpandGlob($"{root}/python3*/site-packages/nvidia/*/lib");

            Assert.Equal(
            [
                $"{root}/python3.12/site-packages/nvidia/nvrtc/lib",
                $"{root}/python3.12/site-packages/nvidia/cu13/lib",
                $"{root}/python3.11/site-packages/nvidia/cublas/lib",
            ], found);
            Assert.Empty(CudaLibraries.ExpandGlob($"{root}/nothing*/lib"));
            Assert.Empty(CudaLibraries.ExpandGlob("relative/*/lib"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void SearchFolders_NeverIncludeTheDriverStubs()
    {
        Assert.DoesNotContain(CudaLibraries.SearchFolders(), f => f.Contains("/stubs", StringComparison.Ordinal));
    }

    [Fact]
    public void TryLoadFirst_OverrideFolder_IsSearchedFirst()
    {
        // The runtime's own native shim stands in for a CUDA library: the loader only has to open it.
        string system = Path.Combine(Path.GetDirectoryName(typeof(object).Assembly.Location)!, "libSystem.Native.so");
        Assert.True(File.Exists(system), $"{system} is missing");
        string dir = Directory.CreateTempSubdirectory("cuda-override-").FullName;
        string? previous = Environment.GetEnvironmentVariable(CudaLibraries.SearchPathVariable);
        try
        {
            File.Copy(system, Path.Combine(dir, "libdistributed-standin.so.13"));
            Environment.SetEnvironmentVariable(CudaLibraries.SearchPathVariable, $"/nonexistent:{dir}");

            bool ok = CudaLibraries.TryLoadFirst(["libdistributed-standin.so.13"], [], out nint handle, out string path, out _);

            Assert.True(ok);
            Assert.NotEqual(0, handle);
            Assert.Equal(Path.Combine(dir, "libdistributed-standin.so.13"), path);
        }
        finally
        {
            Environment.SetEnvironmentVariable(CudaLibraries.SearchPathVariable, previous);
            Directory.Delete(dir, recursive: true);
        }
    }
}
