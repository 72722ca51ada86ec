using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// cuBLAS (libcublas.so.13 or .12). Column-major: for row-major <c>Y[T×N] = X[T×K]·W</c> call
/// <c>GemmEx(m: N, n: T, k: K, A: W, B: X)</c>, i.e. compute <c>Yᵀ = Wᵀ·Xᵀ</c>; see <see cref="CudaWeightMatrix"/>
/// for op/ld per <see cref="WeightLayout"/>. Every function returns a cublasStatus_t (0 = success); wrap in <see cref="Check"/>.
/// </summary>
internal static unsafe partial class CuBlas
{
    private const string Lib = CudaLibraries.CublasImport;

    public const int StatusSuccess = 0;
    public const int StatusNotSupported = 15;

    public const int OpN = 0;
    public const int OpT = 1;

    // cudaDataType_t.
    public const int R32F = 0;
    public const int R16BF = 14;

    // cublasComputeType_t.
    public const int Compute32F = 68;

    // cublasGemmAlgo_t.
    public const int GemmDefault = -1;

    [LibraryImport(Lib, EntryPoint = "cublasCreate_v2")]
    public static partial int cublasCreate(out nint handle);

    [LibraryImport(Lib, EntryPoint = "cublasDestroy_v2")]
    public static partial int cublasDestroy(nint handle);

    [LibraryImport(Lib, EntryPoint = "cublasSetStream_v2")]
    public static partial int cublasSetStream(nint handle, nint stream);

    [LibraryImport(Lib, EntryPoint = "cublasGetVersion_v2")]
    public static partial int cublasGetVersion(nint handle, out int version);

    [LibraryImport(Lib)]
    public static partial int cublasGemmEx(nint handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong a, int aType, int lda, ulong b, int bType, int ldb, float* beta, ulong c, int cType, int ldc,
        int computeType, int algo);

    [LibraryImport(Lib)]
    public static partial int cublasGemmStridedBatchedEx(nint handle, int transA, int transB, int m, int n, int k,
        float* alpha, ulong a, int aType, int lda, long strideA, ulong b, int bType, int ldb, long strideB, float* beta,
        ulong c, int cType, int ldc, long strideC, int batchCount, int computeType, int algo);

    /// <summary>Pointer-array batched GEMM: Aarray, Barray, Carray are device arrays of device pointers.</summary>
    [LibraryImport(Lib)]
    public static partial int cublasGemmBatchedEx(nint handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong aArray, int aType, int lda, ulong bArray, int bType, int ldb, float* beta, ulong cArray, int cType, int ldc,
        int batchCount, int computeType, int algo);

    /// <summary>
    /// <c>cublasGemmGroupedBatchedEx</c> (cuBLAS ≥ 12.5), resolved lazily: 0 when the loaded cuBLAS lacks it.
    /// Signature: handle, transa[], transb[], m[], n[], k[] (host int arrays), alpha[] (host float per group),
    /// Aarray (device array of pointers), Atype, lda[], Barray, Btype, ldb[], beta[], Carray, Ctype, ldc[],
    /// group_count, group_size[] (host), computeType.
    /// </summary>
    public static nint GroupedBatchedExAddress => s_grouped.Value;

    private static readonly Lazy<nint> s_grouped =
        new(() => CudaLibraries.TryGetExport(CudaLibraries.Cublas, "cublasGemmGroupedBatchedEx"));

    /// <summary>Calls <c>cublasGemmGroupedBatchedEx</c> through its resolved address.</summary>
    public static int GemmGroupedBatchedEx(nint address, nint handle, int* transA, int* transB, int* m, int* n, int* k,
        float* alpha, ulong aArray, int aType, int* lda, ulong bArray, int bType, int* ldb, float* beta, ulong cArray,
        int cType, int* ldc, int groupCount, int* groupSize, int computeType)
    {
        var fn = (delegate* unmanaged<nint, int*, int*, int*, int*, int*, float*, ulong, int, int*, ulong, int, int*,
            float*, ulong, int, int*, int, int*, int, int>)address;
        return fn(handle, transA, transB, m, n, k, alpha, aArray, aType, lda, bArray, bType, ldb, beta, cArray, cType,
            ldc, groupCount, groupSize, computeType);
    }

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> when <paramref name="status"/> ≠ 0.</summary>
    public static void Check(int status, string call)
    {
        if (status != StatusSuccess)
        {
            throw new CudaException($"{call} failed: {Describe(status)}") { Call = call, Status = status };
        }
    }

    /// <summary>Name of a cublasStatus_t (cublas_api.h).</summary>
    public static string Describe(int status) => status switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED [1]",
        3 => "CUBLAS_STATUS_ALLOC_FAILED [3]",
        7 => "CUBLAS_STATUS_INVALID_VALUE [7]",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH [8]",
        11 => "CUBLAS_STATUS_MAPPING_ERROR [11]",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED [13]",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR [14]",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED [15]",
        16 => "CUBLAS_STATUS_LICENSE_ERROR [16]",
        _ => $"cublasStatus {status}",
    };
}
