using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cuda.Interop;

/// <summary>
/// Base of the CUDA SafeHandles. Release runs with the owning context made current on the releasing thread (the
/// finalizer thread included), because driver frees are context-bound. Release errors are swallowed there: a failing
/// free at teardown (e.g. a context already destroyed by a crashed device) must not crash the process.
/// </summary>
internal abstract class CudaHandle : SafeHandle
{
    protected CudaHandle(nint context)
        : base(0, ownsHandle: true)
    {
        Context = context;
    }

    /// <summary>The CUcontext the resource belongs to (0 for context-free resources such as NVRTC programs).</summary>
    public nint Context { get; }

    public override bool IsInvalid => handle == 0;

    protected void MakeContextCurrent()
    {
        if (Context != 0)
        {
            _ = CuDriver.cuCtxSetCurrent(Context);
        }
    }
}

/// <summary>Retained primary context of one device (<c>cuDevicePrimaryCtxRetain</c> / <c>Release_v2</c>).</summary>
internal sealed class PrimaryContextHandle : CudaHandle
{
    private PrimaryContextHandle(nint context, int device)
        : base(context)
    {
        Device = device;
        SetHandle(context);
    }

    public int Device { get; }

    public static PrimaryContextHandle Retain(int device)
    {
        CuDriver.Check(CuDriver.cuDevicePrimaryCtxRetain(out nint ctx, device), "cuDevicePrimaryCtxRetain");
        return new PrimaryContextHandle(ctx, device);
    }

    /// <summary>Makes the context current on the calling thread (cheap; done at the start of every backend call).</summary>
    public void SetCurrent() => CuDriver.Check(CuDriver.cuCtxSetCurrent(handle), "cuCtxSetCurrent");

    protected override bool ReleaseHandle()
    {
        return CuDriver.cuDevicePrimaryCtxRelease(Device) == CuDriver.Success;
    }
}

/// <summary>Device memory from <c>cuMemAlloc_v2</c> (never managed memory).</summary>
internal sealed class DeviceBuffer : CudaHandle
{
    private DeviceBuffer(nint context, ulong pointer, long bytes)
        : base(context)
    {
        Bytes = bytes;
        SetHandle((nint)pointer);
    }

    /// <summary>Size in bytes.</summary>
    public long Bytes { get; }

    /// <summary>The CUdeviceptr.</summary>
    public ulong Pointer => (ulong)handle;

    /// <summary>Allocates <paramref name="bytes"/> (≥ 1) in the current context.</summary>
    public static DeviceBuffer Allocate(nint context, long bytes)
    {
        long size = Math.Max(bytes, 1);
        int result = CuDriver.cuMemAlloc(out ulong pointer, (nuint)size);
        if (result != CuDriver.Success)
        {
            throw new CudaException($"cuMemAlloc_v2({size} bytes) failed: {CuDriver.Describe(result)}")
            {
                Call = "cuMemAlloc_v2",
                Status = result,
            };
        }
        return new DeviceBuffer(context, pointer, size);
    }

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuMemFree((ulong)handle) == CuDriver.Success;
    }
}

/// <summary>Page-locked host memory from <c>cuMemHostAlloc</c>, the staging area of every transfer.</summary>
internal sealed class PinnedBuffer : CudaHandle
{
    private PinnedBuffer(nint context, nint pointer, long bytes)
        : base(context)
    {
        Bytes = bytes;
        SetHandle(pointer);
    }

    public long Bytes { get; }

    public nint Pointer => handle;

    public static PinnedBuffer Allocate(nint context, long bytes)
    {
        long size = Math.Max(bytes, 1);
        int result = CuDriver.cuMemHostAlloc(out nint pointer, (nuint)size, 0);
        if (result != CuDriver.Success)
        {
            throw new CudaException($"cuMemHostAlloc({size} bytes) failed: {CuDriver.Describe(result)}")
            {
                Call = "cuMemHostAlloc",
                Status = result,
            };
        }
        return new PinnedBuffer(context, pointer, size);
    }

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuMemFreeHost(handle) == CuDriver.Success;
    }
}

/// <summary>A non-blocking stream (<c>cuStreamCreate</c>).</summary>
internal sealed class StreamHandle : CudaHandle
{
    private StreamHandle(nint context, nint stream)
        : base(context)
    {
        SetHandle(stream);
    }

    public nint Value => handle;

    public static StreamHandle Create(nint context)
    {
        CuDriver.Check(CuDriver.cuStreamCreate(out nint stream, CuDriver.StreamNonBlocking), "cuStreamCreate");
        return new StreamHandle(context, stream);
    }

    public void Synchronize() => CuDriver.Check(CuDriver.cuStreamSynchronize(handle), "cuStreamSynchronize");

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuStreamDestroy(handle) == CuDriver.Success;
    }
}

/// <summary>A timing event (<c>cuEventCreate</c>).</summary>
internal sealed class EventHandle : CudaHandle
{
    private EventHandle(nint context, nint cuEvent)
        : base(context)
    {
        SetHandle(cuEvent);
    }

    public nint Value => handle;

    public static EventHandle Create(nint context)
    {
        CuDriver.Check(CuDriver.cuEventCreate(out nint ev, CuDriver.EventDefault), "cuEventCreate");
        return new EventHandle(context, ev);
    }

    public void Record(StreamHandle stream) => CuDriver.Check(CuDriver.cuEventRecord(handle, stream.Value), "cuEventRecord");

    /// <summary>Milliseconds between <paramref name="start"/> and this (recorded, completed) event.</summary>
    public float ElapsedSince(EventHandle start)
    {
        CuDriver.Check(CuDriver.cuEventSynchronize(handle), "cuEventSynchronize");
        CuDriver.Check(CuDriver.cuEventElapsedTime(out float ms, start.Value, handle), "cuEventElapsedTime");
        return ms;
    }

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuEventDestroy(handle) == CuDriver.Success;
    }
}

/// <summary>A loaded module (<c>cuModuleLoadData</c>).</summary>
internal sealed class CudaModuleHandle : CudaHandle
{
    private CudaModuleHandle(nint context, nint module)
        : base(context)
    {
        SetHandle(module);
    }

    public nint Value => handle;

    public static unsafe CudaModuleHandle Load(nint context, ReadOnlySpan<byte> image)
    {
        fixed (byte* p = image)
        {
            CuDriver.Check(CuDriver.cuModuleLoadData(out nint module, p), "cuModuleLoadData");
            return new CudaModuleHandle(context, module);
        }
    }

    public nint GetFunction(string name)
    {
        CuDriver.Check(CuDriver.cuModuleGetFunction(out nint fn, handle, name), $"cuModuleGetFunction({name})");
        return fn;
    }

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuDriver.cuModuleUnload(handle) == CuDriver.Success;
    }
}

/// <summary>A cuBLAS handle (<c>cublasCreate_v2</c>); one per stream, never shared between concurrent callers.</summary>
internal sealed class CublasHandle : CudaHandle
{
    private CublasHandle(nint context, nint value)
        : base(context)
    {
        SetHandle(value);
    }

    public nint Value => handle;

    public static CublasHandle Create(nint context, StreamHandle stream)
    {
        CuBlas.Check(CuBlas.cublasCreate(out nint h), "cublasCreate_v2");
        var result = new CublasHandle(context, h);
        CuBlas.Check(CuBlas.cublasSetStream(h, stream.Value), "cublasSetStream_v2");
        return result;
    }

    protected override bool ReleaseHandle()
    {
        MakeContextCurrent();
        return CuBlas.cublasDestroy(handle) == CuBlas.StatusSuccess;
    }
}

/// <summary>An NVRTC program (<c>nvrtcCreateProgram</c>); context-free.</summary>
internal sealed class NvrtcProgramHandle : CudaHandle
{
    private NvrtcProgramHandle(nint program)
        : base(0)
    {
        SetHandle(program);
    }

    public nint Value => handle;

    public static unsafe NvrtcProgramHandle Create(string source, string name)
    {
        Nvrtc.Check(Nvrtc.nvrtcCreateProgram(out nint program, source, name, 0, null, null), "nvrtcCreateProgram");
        return new NvrtcProgramHandle(program);
    }

    protected override bool ReleaseHandle()
    {
        nint p = handle;
        return Nvrtc.nvrtcDestroyProgram(ref p) == Nvrtc.Success;
    }
}
