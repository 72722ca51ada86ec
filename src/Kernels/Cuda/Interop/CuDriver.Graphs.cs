using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// Stream capture and CUDA graphs (driver API, CUDA 11.4+; the same symbols in CUDA 12 and 13): a stream put in
/// capture mode records the work issued on it instead of running it, ending the capture yields a graph, an instantiated
/// graph replays that work with one launch. Kernel arguments are copied by value at capture; pointers keep their
/// addresses, so a replay reads whatever those buffers hold then.
/// </summary>
internal static unsafe partial class CuDriver
{
    /// <summary><c>CU_STREAM_CAPTURE_MODE_GLOBAL</c>: unsafe calls (allocation, synchronization) from any thread fail during the capture.</summary>
    public const int CaptureModeGlobal = 0;

    /// <summary><c>CU_STREAM_CAPTURE_MODE_THREAD_LOCAL</c>: unsafe calls fail on the capturing thread only (other threads' backends keep working).</summary>
    public const int CaptureModeThreadLocal = 1;

    /// <summary><c>CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED</c>: the call is not permitted while the stream (or the thread) captures.</summary>
    public const int ErrorStreamCaptureUnsupported = 900;

    /// <summary><c>CUDA_ERROR_STREAM_CAPTURE_INVALIDATED</c>: an earlier error invalidated the capture; it yields no graph.</summary>
    public const int ErrorStreamCaptureInvalidated = 901;

    /// <summary><c>CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)</c>.</summary>
    [LibraryImport(Lib, EntryPoint = "cuStreamBeginCapture_v2")]
    public static partial int cuStreamBeginCapture(nint stream, int mode);

    /// <summary><c>CUresult cuStreamEndCapture(CUstream hStream, CUgraph* phGraph)</c>; a NULL graph when the capture was invalidated.</summary>
    [LibraryImport(Lib)]
    public static partial int cuStreamEndCapture(nint stream, out nint graph);

    /// <summary><c>CUresult cuGraphInstantiateWithFlags(CUgraphExec* phGraphExec, CUgraph hGraph, unsigned long long flags)</c>.</summary>
    [LibraryImport(Lib)]
    public static partial int cuGraphInstantiateWithFlags(out nint graphExec, nint graph, ulong flags);

    /// <summary><c>CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)</c>.</summary>
    [LibraryImport(Lib)]
    public static partial int cuGraphLaunch(nint graphExec, nint stream);

    /// <summary><c>CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)</c>.</summary>
    [LibraryImport(Lib)]
    public static partial int cuGraphExecDestroy(nint graphExec);

    /// <summary><c>CUresult cuGraphDestroy(CUgraph hGraph)</c>.</summary>
    [LibraryImport(Lib)]
    public static partial int cuGraphDestroy(nint graph);
}
