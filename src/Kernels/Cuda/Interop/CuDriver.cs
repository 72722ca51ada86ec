using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// CUDA driver API (libcuda.so.1, shipped with the driver). Every function returns a CUresult (0 = success); wrap calls
/// in <see cref="Check"/>. Versioned entry points (<c>_v2</c>) are the ones cuda.h maps the plain names to.
/// Device pointers are <c>CUdeviceptr</c> (64-bit, <see cref="ulong"/>).
/// </summary>
internal static unsafe partial class CuDriver
{
    private const string Lib = CudaLibraries.DriverImport;

    public const int Success = 0;
    public const int ErrorNoDevice = 100;
    public const int ErrorNotReady = 600;

    // CUdevice_attribute values (cuda.h).
    public const int AttrMaxThreadsPerBlock = 1;
    public const int AttrMultiprocessorCount = 16;
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int AttrL2CacheSize = 38;
    public const int AttrMemoryClockRate = 36;
    public const int AttrGlobalMemoryBusWidth = 37;

    public const uint EventDefault = 0;
    public const uint StreamNonBlocking = 1;

    [LibraryImport(Lib)]
    public static partial int cuInit(uint flags);

    [LibraryImport(Lib)]
    public static partial int cuDriverGetVersion(out int version);

    [LibraryImport(Lib)]
    public static partial int cuDeviceGetCount(out int count);

    [LibraryImport(Lib)]
    public static partial int cuDeviceGet(out int device, int ordinal);

    [LibraryImport(Lib)]
    public static partial int cuDeviceGetName(byte* name, int length, int device);

    [LibraryImport(Lib)]
    public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);

    [LibraryImport(Lib, EntryPoint = "cuDeviceTotalMem_v2")]
    public static partial int cuDeviceTotalMem(out nuint bytes, int device);

    [LibraryImport(Lib)]
    public static partial int cuDevicePrimaryCtxRetain(out nint context, int device);

    [LibraryImport(Lib, EntryPoint = "cuDevicePrimaryCtxRelease_v2")]
    public static partial int cuDevicePrimaryCtxRelease(int device);

    [LibraryImport(Lib)]
    public static partial int cuCtxSetCurrent(nint context);

    [LibraryImport(Lib)]
    public static partial int cuCtxSynchronize();

    [LibraryImport(Lib, EntryPoint = "cuMemGetInfo_v2")]
    public static partial int cuMemGetInfo(out nuint free, out nuint total);

    [LibraryImport(Lib, EntryPoint = "cuMemAlloc_v2")]
    public static partial int cuMemAlloc(out ulong devicePointer, nuint bytes);

    [LibraryImport(Lib, EntryPoint = "cuMemFree_v2")]
    public static partial int cuMemFree(ulong devicePointer);

    [LibraryImport(Lib)]
    public static partial int cuMemHostAlloc(out nint hostPointer, nuint bytes, uint flags);

    [LibraryImport(Lib)]
    public static partial int cuMemFreeHost(nint hostPointer);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyHtoDAsync_v2")]
    public static partial int cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, nint stream);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoHAsync_v2")]
    public static partial int cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, nint stream);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoDAsync_v2")]
    public static partial int cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, nint stream);

    [LibraryImport(Lib, EntryPoint = "cuMemsetD32Async")]
    public static partial int cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);

    [LibraryImport(Lib)]
    public static partial int cuStreamCreate(out nint stream, uint flags);

    [LibraryImport(Lib, EntryPoint = "cuStreamDestroy_v2")]
    public static partial int cuStreamDestroy(nint stream);

    [LibraryImport(Lib)]
    public static partial int cuStreamSynchronize(nint stream);

    [LibraryImport(Lib)]
    public static partial int cuEventCreate(out nint cuEvent, uint flags);

    [LibraryImport(Lib, EntryPoint = "cuEventDestroy_v2")]
    public static partial int cuEventDestroy(nint cuEvent);

    [LibraryImport(Lib)]
    public static partial int cuEventRecord(nint cuEvent, nint stream);

    [LibraryImport(Lib)]
    public static partial int cuEventSynchronize(nint cuEvent);

    [LibraryImport(Lib)]
    public static partial int cuEventElapsedTime(out float milliseconds, nint start, nint end);

    [LibraryImport(Lib)]
    public static partial int cuModuleLoadData(out nint module, void* image);

    [LibraryImport(Lib)]
    public static partial int cuModuleUnload(nint module);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int cuModuleGetFunction(out nint function, nint module, string name);

    [LibraryImport(Lib)]
    public static partial int cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY,
        uint blockZ, uint sharedBytes, nint stream, void** parameters, void** extra);

    [LibraryImport(Lib)]
    public static partial int cuGetErrorName(int result, out byte* name);

    [LibraryImport(Lib)]
    public static partial int cuGetErrorString(int result, out byte* text);

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> and the error when <paramref name="result"/> ≠ 0.</summary>
    public static void Check(int result, string call)
    {
        if (result != Success)
        {
            throw new CudaException($"{call} failed: {Describe(result)}") { Call = call, Status = result };
        }
    }

    /// <summary><c>CUDA_ERROR_X (text) [code]</c> for a CUresult.</summary>
    public static string Describe(int result)
    {
        string name = "?";
        string text = "";
        try
        {
            if (cuGetErrorName(result, out byte* n) == Success && n != null)
            {
                name = Marshal.PtrToStringUTF8((nint)n) ?? "?";
            }
            if (cuGetErrorString(result, out byte* t) == Success && t != null)
            {
                text = Marshal.PtrToStringUTF8((nint)t) ?? "";
            }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CudaException)
        {
            // The driver could not even describe the error; the numeric code below still identifies it.
        }
        return $"{name} ({text}) [CUresult {result}]";
    }
}
