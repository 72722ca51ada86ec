namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// An instantiated CUDA graph (<c>CUgraphExec</c>) made by capturing the work a callback issues on a stream. The
/// intermediate <c>CUgraph</c> is destroyed as soon as it is instantiated (the executable graph does not need it).
/// </summary>
internal sealed class GraphExecHandle : CudaHandle
{
    private GraphExecHandle(nint context, nint exec)
        : base(context)
    {
        SetHandle(exec);
    }

    /// <summary>
    /// Captures what <paramref name="issue"/> queues on <paramref name="stream"/> (thread-local mode: another thread's
    /// allocations and synchronizations stay legal) and instantiates it. The capture always ends, also when
    /// <paramref name="issue"/> throws: the stream is usable again afterwards.
    /// </summary>
    /// <exception cref="CudaException">The capture was invalidated (e.g. <paramref name="issue"/> allocated device memory or
    /// synchronized the stream: <see cref="CuDriver.ErrorStreamCaptureUnsupported"/> from that call, then
    /// <see cref="CuDriver.ErrorStreamCaptureInvalidated"/>), or instantiation failed.</exception>
    public static GraphExecHandle Capture(nint context, StreamHandle stream, Action issue)
    {
        CuDriver.Check(CuDriver.cuStreamBeginCapture(stream.Value, CuDriver.CaptureModeThreadLocal), "cuStreamBeginCapture_v2");
        nint graph;
        try
        {
            issue();
        }
        catch
        {
            // End the (probably invalidated) capture so the stream works again; the caller sees the first error.
            if (CuDriver.cuStreamEndCapture(stream.Value, out nint discarded) == CuDriver.Success && discarded != 0)
            {
                _ = CuDriver.cuGraphDestroy(discarded);
            }
            throw;
        }
        CuDriver.Check(CuDriver.cuStreamEndCapture(stream.Value, out graph), "cuStreamEndCapture");
        try
        {
            CuDriver.Check(CuDriver.cuGraphInstantiateWithFlags(out nint exec, graph, 0), "cuGraphInstantiateWithFlags");
            return new GraphExecHandle(context, exec);
        }
        finally
        {
            _ = CuDriver.cuGraphDestroy(graph);
        }
    }

    /// <summary>Queues one replay of the graph on <paramref name="stream"/>.</summary>
    public void Launch(StreamHandle stream) => CuDriver.Check(CuDriver.cuGraphLaunch(handle, stream.Value), "cuGraphLaunch");

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuGraphExecDestroy(handle) == CuDriver.Success;
    }
}
