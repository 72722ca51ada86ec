using System.Reflection;
using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// Finds and loads the three native libraries the CUDA backend binds to (driver, cuBLAS, NVRTC) across CUDA 13 and 12
/// installs, and routes the logical <c>[LibraryImport]</c> names of this assembly to them.
/// </summary>
/// <remarks>
/// Search order per library: every file name in <see cref="CudaLibrary.FileNames"/> (newest major first); for each
/// name, first the folders of <c>DISTRIBUTED_CUDA_LIBRARY_PATH</c> (colon-separated), then the system loader (bare name:
/// LD_LIBRARY_PATH and the ldconfig cache), then the CUDA toolkit folders and the Python wheels' <c>nvidia/*/lib</c>
/// folders. The driver's <c>lib64/stubs</c> folder is never searched: its libcuda only returns errors.
/// </remarks>
internal static class CudaLibraries
{
    /// <summary>Logical name used by <see cref="CuDriver"/>'s imports.</summary>
    public const string DriverImport = "distributed-cuda-driver";

    /// <summary>Logical name used by <see cref="CuBlas"/>'s imports.</summary>
    public const string CublasImport = "distributed-cublas";

    /// <summary>Logical name used by <see cref="Nvrtc"/>'s imports.</summary>
    public const string NvrtcImport = "distributed-nvrtc";

    /// <summary>Environment variable with extra folders searched first (colon-separated).</summary>
    public const string SearchPathVariable = "DISTRIBUTED_CUDA_LIBRARY_PATH";

    public static readonly CudaLibrary Driver = new("CUDA driver", DriverImport, ["libcuda.so.1", "libcuda.so"]);
    public static readonly CudaLibrary Cublas = new("cuBLAS", CublasImport, ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]);
    public static readonly CudaLibrary Nvrtc = new("NVRTC", NvrtcImport, ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]);

    private static readonly object s_gate = new();
    private static readonly Dictionary<string, nint> s_loaded = new(StringComparer.Ordinal);
    private static readonly Dictionary<string, string> s_paths = new(StringComparer.Ordinal);
    private static bool s_resolverInstalled;

    /// <summary>Folder patterns searched after the system loader (a <c>*</c> matches one path segment).</summary>
    public static IReadOnlyList<string> DefaultFolderPatterns { get; } =
    [
        "$CUDA_HOME/lib64",
        "$CUDA_PATH/lib64",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/cuda-13*/lib64",
        "/usr/local/cuda-12*/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/python3*/dist-packages/nvidia/*/lib",
        "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
        "/usr/lib/python3*/site-packages/nvidia/*/lib",
        "/usr/local/lib/python3*/site-packages/nvidia/*/lib",
        "/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
        "/opt/conda/lib/python3*/site-packages/nvidia/*/lib",
        "$HOME/.local/lib/python3*/site-packages/nvidia/*/lib",
    ];

    /// <summary>
    /// Loads <paramref name="library"/> once (later calls return the cached handle) and installs the import resolver.
    /// </summary>
    /// <exception cref="CudaLibraryNotFoundException">No candidate could be loaded; the message lists where it looked.</exception>
    public static nint Load(CudaLibrary library)
    {
        lock (s_gate)
        {
            InstallResolver();
            if (s_loaded.TryGetValue(library.ImportName, out nint cached))
            {
                return cached;
            }
            IReadOnlyList<string> folders = SearchFolders();
            if (!TryLoadFirst(library.FileNames, folders, out nint handle, out string path, out string error))
            {
                throw new CudaLibraryNotFoundException(library.DisplayName, library.FileNames, folders, error);
            }
            s_loaded[library.ImportName] = handle;
            s_paths[library.ImportName] = path;
            return handle;
        }
    }

    /// <summary>Path the library was loaded from (a bare file name when the system loader found it), or null.</summary>
    public static string? LoadedPath(CudaLibrary library)
    {
        lock (s_gate)
        {
            return s_paths.GetValueOrDefault(library.ImportName);
        }
    }

    /// <summary>An exported symbol of an already loaded library, or 0 when it does not export it (older versions).</summary>
    public static nint TryGetExport(CudaLibrary library, string symbol)
    {
        nint handle = Load(library);
        return NativeLibrary.TryGetExport(handle, symbol, out nint address) ? address : 0;
    }

    /// <summary>
    /// Tries every file name, in order, in every folder (and through the system loader); returns the first that loads.
    /// </summary>
    /// <param name="fileNames">Candidate file names, preferred first.</param>
    /// <param name="folders">Folders searched after the system loader (the <c>DISTRIBUTED_CUDA_LIBRARY_PATH</c>
    /// folders, which come first in <paramref name="folders"/>, are tried before it).</param>
    /// <param name="error">On failure: the loader's message for the first candidate, for the exception text.</param>
    public static bool TryLoadFirst(IReadOnlyList<string> fileNames, IReadOnlyList<string> folders, out nint handle,
        out string path, out string error)
    {
        error = "";
        IReadOnlyList<string> overrides = OverrideFolders();
        foreach (string name in fileNames)
        {
            foreach (string folder in overrides)
            {
                if (TryLoadPath(Path.Combine(folder, name), out handle, ref error))
                {
                    path = Path.Combine(folder, name);
                    return true;
                }
            }
            if (TryLoadPath(name, out handle, ref error))
            {
                path = name;
                return true;
            }
            foreach (string folder in folders)
            {
                string candidate = Path.Combine(folder, name);
                if (!File.Exists(candidate))
                {
                    continue;
                }
                // A file that exists but does not load (e.g. its libcublasLt is missing) explains more than "not found".
                string fileError = "";
                if (TryLoadPath(candidate, out handle, ref fileError))
                {
                    path = candidate;
                    return true;
                }
                error = fileError;
            }
        }
        handle = 0;
        path = "";
        return false;
    }

    /// <summary>The folders searched after the system loader: <see cref="DefaultFolderPatterns"/> expanded, existing only.</summary>
    public static IReadOnlyList<string> SearchFolders()
    {
        var result = new List<string>();
        foreach (string pattern in DefaultFolderPatterns)
        {
            string? expanded = ExpandVariables(pattern);
            if (expanded is null)
            {
                continue;
            }
            foreach (string folder in ExpandGlob(expanded))
            {
                if (!folder.Contains("/stubs", StringComparison.Ordinal) && !result.Contains(folder))
                {
                    result.Add(folder);
                }
            }
        }
        return result;
    }

    /// <summary>Expands <c>*</c> in any segment of an absolute folder pattern into the existing folders it matches, sorted.</summary>
    public static IReadOnlyList<string> ExpandGlob(string pattern)
    {
        if (!pattern.StartsWith('/'))
        {
            return [];
        }
        var current = new List<string> { "/" };
        foreach (string segment in pattern.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            var next = new List<string>();
            foreach (string parent in current)
            {
                if (segment.Contains('*', StringComparison.Ordinal))
                {
                    try
                    {
                        var matches = Directory.EnumerateDirectories(parent, segment).ToList();
                        // Newest version folder first (python3.12 before python3.11, cuda-13.0 before cuda-12.9).
                        matches.Sort((a, b) => string.CompareOrdinal(b, a));
                        next.AddRange(matches);
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        // An unreadable folder just yields no candidates.
                    }
                }
                else
                {
                    string child = Path.Combine(parent, segment);
                    if (Directory.Exists(child))
                    {
                        next.Add(child);
                    }
                }
            }
            current = next;
            if (current.Count == 0)
            {
                break;
            }
        }
        return current;
    }

    private static IReadOnlyList<string> OverrideFolders()
    {
        string? value = Environment.GetEnvironmentVariable(SearchPathVariable);
        return string.IsNullOrWhiteSpace(value)
            ? []
            : value.Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
    }

    private static string? ExpandVariables(string pattern)
    {
        if (!pattern.StartsWith('$'))
        {
            return pattern;
        }
        int slash = pattern.IndexOf('/', StringComparison.Ordinal);
        string name = slash < 0 ? pattern[1..] : pattern[1..slash];
        string? value = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrEmpty(value))
        {
            return null;
        }
        return slash < 0 ? value : value.TrimEnd('/') + pattern[slash..];
    }

    private static bool TryLoadPath(string path, out nint handle, ref string firstError)
    {
        try
        {
            handle = NativeLibrary.Load(path);
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            if (firstError.Length == 0)
            {
                // .NET's message ends with the dlerror() line; the generic advice before it is noise here.
                string[] lines = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                firstError = lines.Length == 0 ? e.Message : lines[^1];
            }
            handle = 0;
            return false;
        }
    }

    private static void InstallResolver()
    {
        if (s_resolverInstalled)
        {
            return;
        }
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
        s_resolverInstalled = true;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        CudaLibrary? library = name switch
        {
            DriverImport => Driver,
            CublasImport => Cublas,
            NvrtcImport => Nvrtc,
            _ => null,
        };
        // Unknown names fall through to the default loader; a CUDA name that fails to load throws with the full search list.
        return library is null ? 0 : Load(library);
    }
}

/// <summary>One native library and the file names it may have.</summary>
/// <param name="DisplayName">Name for messages, e.g. <c>cuBLAS</c>.</param>
/// <param name="ImportName">Logical <c>[LibraryImport]</c> name routed by the resolver.</param>
/// <param name="FileNames">Candidate file names, preferred first.</param>
internal sealed record CudaLibrary(string DisplayName, string ImportName, IReadOnlyList<string> FileNames);
