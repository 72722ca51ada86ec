namespace Distributed.Kernels.Cuda;

/// <summary>A CUDA driver, cuBLAS or NVRTC call returned an error. The message names the call and the error.</summary>
public class CudaException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CudaException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with an inner cause.</summary>
    public CudaException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Name of the failing native call, e.g. <c>cuMemAlloc_v2</c>.</summary>
    public string? Call { get; init; }

    /// <summary>Numeric status the call returned (CUresult, cublasStatus_t or nvrtcResult), or 0 when not applicable.</summary>
    public int Status { get; init; }
}

/// <summary>
/// No usable CUDA device: a library is missing, the driver reports no device, the ordinal is out of range, or the
/// kernels failed to compile. The message says which.
/// </summary>
public class CudaUnavailableException : CudaException
{
    /// <summary>Creates the exception.</summary>
    public CudaUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with an inner cause.</summary>
    public CudaUnavailableException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>A native CUDA library could not be loaded. The message names it, the file names tried and the folders searched.</summary>
public sealed class CudaLibraryNotFoundException : CudaUnavailableException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="library">Display name, e.g. <c>cuBLAS</c>.</param>
    /// <param name="fileNames">File names tried, preferred first.</param>
    /// <param name="folders">Folders searched besides the system loader.</param>
    /// <param name="loaderError">The system loader's message for the first candidate.</param>
    public CudaLibraryNotFoundException(string library, IReadOnlyList<string> fileNames, IReadOnlyList<string> folders,
        string loaderError)
        : base(BuildMessage(library, fileNames, folders, loaderError))
    {
        Library = library;
        FileNames = fileNames;
        Folders = folders;
    }

    /// <summary>Display name of the missing library.</summary>
    public string Library { get; }

    /// <summary>File names tried.</summary>
    public IReadOnlyList<string> FileNames { get; }

    /// <summary>Folders searched besides the system loader.</summary>
    public IReadOnlyList<string> Folders { get; }

    private static string BuildMessage(string library, IReadOnlyList<string> fileNames, IReadOnlyList<string> folders,
        string loaderError)
    {
        string where = folders.Count == 0 ? "(no candidate folder exists)" : string.Join(", ", folders);
        string cause = loaderError.Length == 0 ? "" : $" First loader error: {loaderError}";
        return $"{library} library not found: tried {string.Join(", ", fileNames)} through the system loader " +
            $"(LD_LIBRARY_PATH, ldconfig cache) and in {where}. Set {Interop.CudaLibraries.SearchPathVariable} " +
            $"to a folder holding it.{cause}";
    }
}
