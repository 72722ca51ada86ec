using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>NVRTC (libnvrtc.so.13 or .12): CUDA C++ to PTX or CUBIN at run time. Functions return nvrtcResult (0 = success).</summary>
internal static unsafe partial class Nvrtc
{
    private const string Lib = CudaLibraries.NvrtcImport;

    public const int Success = 0;

    [LibraryImport(Lib)]
    public static partial int nvrtcVersion(out int major, out int minor);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int nvrtcCreateProgram(out nint program, string source, string name, int headerCount,
        byte** headers, byte** includeNames);

    [LibraryImport(Lib)]
    public static partial int nvrtcDestroyProgram(ref nint program);

    [LibraryImport(Lib)]
    public static partial int nvrtcCompileProgram(nint program, int optionCount, byte** options);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetPTXSize(nint program, out nuint size);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetPTX(nint program, byte* ptx);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetCUBINSize(nint program, out nuint size);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetCUBIN(nint program, byte* cubin);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetProgramLogSize(nint program, out nuint size);

    [LibraryImport(Lib)]
    public static partial int nvrtcGetProgramLog(nint program, byte* log);

    [LibraryImport(Lib)]
    public static partial byte* nvrtcGetErrorString(int result);

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> when <paramref name="result"/> ≠ 0.</summary>
    public static void Check(int result, string call)
    {
        if (result != Success)
        {
            throw new CudaException($"{call} failed: {Describe(result)}") { Call = call, Status = result };
        }
    }

    /// <summary><c>NVRTC_ERROR_X [code]</c>.</summary>
    public static string Describe(int result)
    {
        try
        {
            byte* text = nvrtcGetErrorString(result);
            return $"{(text == null ? "?" : Marshal.PtrToStringUTF8((nint)text))} [nvrtcResult {result}]";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"nvrtcResult {result}";
        }
    }
}
