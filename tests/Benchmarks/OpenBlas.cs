using System.Runtime.InteropServices;

namespace Distributed.Benchmarks;

/// <summary>
/// Benchmark-only bindings to OpenBLAS (Debian <c>libopenblas0-pthread</c>): the fp32 baseline our bf16 kernels are
/// compared with. Never a runtime dependency of the engine.
/// </summary>
internal static unsafe partial class OpenBlas
{
    public const string Library = "libopenblas.so.0";
    public const int RowMajor = 101;
    public const int NoTrans = 111;
    public const int Trans = 112;

    /// <summary>True when the library can be loaded in this process.</summary>
    public static bool IsAvailable()
    {
        if (!NativeLibrary.TryLoad(Library, out var handle))
        {
            return false;
        }
        NativeLibrary.Free(handle);
        return true;
    }

    [LibraryImport(Library, EntryPoint = "cblas_sgemm")]
    public static partial void Sgemm(int order, int transA, int transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(Library, EntryPoint = "cblas_sgemv")]
    public static partial void Sgemv(int order, int trans, int m, int n, float alpha, float* a, int lda,
        float* x, int incX, float beta, float* y, int incY);

    [LibraryImport(Library, EntryPoint = "openblas_set_num_threads")]
    public static partial void SetNumThreads(int threads);

    [LibraryImport(Library, EntryPoint = "openblas_get_corename")]
    private static partial byte* GetCoreNameRaw();

    public static string CoreName() => Marshal.PtrToStringUTF8((nint)GetCoreNameRaw()) ?? "?";
}
