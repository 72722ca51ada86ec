using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// <see cref="IKernelBackend"/> on one NVIDIA GPU: bf16 GEMMs through cuBLAS (<c>cublasGemmEx</c>, fp32 compute, fp32
/// output), every other op as CUDA C compiled at start by NVRTC (<c>native/kernels.cu</c>). Activations stay fp32 host
/// memory at the interface: each call stages its inputs through pinned buffers, runs on its own stream and returns
/// after copying the results back.
/// </summary>
/// <remarks>
/// <para><b>Precision.</b> With <see cref="CudaPrecision.Split"/> (default) GEMM activations are fed as two bf16 rows
/// (hi + lo) so results match fp32 activations to ~2⁻¹⁶ relative; <see cref="CudaPrecision.Fast"/> rounds them to bf16
/// once. Non-GEMM ops compute in fp32 like the CPU backend; transcendental functions (expf, sinf, cosf) differ from
/// .NET's by an ulp or two.</para>
/// <para><b>Batch invariance (where it does not hold).</b> The non-GEMM kernels reduce each row in a fixed order with a
/// fixed block size, so a row's result never depends on the other rows. The GEMMs are <i>not</i> batch invariant:
/// cuBLAS chooses its kernel (tile shape, split-K) from the problem shape, so the same row can round differently when
/// the row count changes (differences at fp32 rounding level, ~1e-6 relative), and the grouped path may differ from
/// the per-group path the same way. For the same shapes the results are deterministic run to run.
/// <see cref="KernelCapabilities.BatchInvariant"/> is therefore false; the GPU check measures the difference.</para>
/// <para><b>Threading.</b> Calls are thread-safe: each takes a call context (stream, cuBLAS handle, scratch) from a
/// pool, one per concurrent caller.</para>
/// </remarks>
public sealed unsafe partial class CudaKernelBackend : IKernelBackend
{
    private const long WeightUploadChunkBytes = 32L << 20;

    private readonly PrimaryContextHandle _context;
    private readonly CudaKernelModule _module;
    private readonly ConcurrentBag<CudaCallContext> _pool = [];
    private readonly nint _groupedAddress;
    private bool _disposed;

    /// <summary>Opens device <paramref name="ordinal"/>, compiles the kernels and probes the grouped GEMM.</summary>
    /// <exception cref="CudaUnavailableException">No usable device; the message says why (missing library, no device,
    /// ordinal out of range, kernel compilation failed).</exception>
    public CudaKernelBackend(int ordinal = 0, CudaBackendOptions? options = null)
    {
        Options = options ?? new CudaBackendOptions();
        int device;
        try
        {
            CudaLibraries.Load(CudaLibraries.Driver);
            int init = CuDriver.cuInit(0);
            if (init != CuDriver.Success)
            {
                throw new CudaUnavailableException($"cuInit failed: {CuDriver.Describe(init)} (no usable NVIDIA driver/device)");
            }
            CuDriver.Check(CuDriver.cuDeviceGetCount(out int count), "cuDeviceGetCount");
            if (count == 0)
            {
                throw new CudaUnavailableException("the CUDA driver reports no device");
            }
            if (ordinal < 0 || ordinal >= count)
            {
                throw new CudaUnavailableException($"CUDA device ordinal {ordinal} is out of range: {count} device(s) present");
            }
            CuDriver.Check(CuDriver.cuDeviceGet(out device, ordinal), "cuDeviceGet");
            CudaLibraries.Load(CudaLibraries.Cublas);
            CudaLibraries.Load(CudaLibraries.Nvrtc);
        }
        catch (CudaUnavailableException)
        {
            throw;
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException)
        {
            throw new CudaUnavailableException($"CUDA is not usable: {e.Message}", e);
        }

        _context = PrimaryContextHandle.Retain(device);
        try
        {
            _context.SetCurrent();
            Info = ReadDeviceInfo(ordinal, device);
            _module = CudaKernelModule.Create(_context.DangerousGetHandle(), Info.ComputeCapabilityMajor, Info.ComputeCapabilityMinor);
            Info = Info with { KernelImage = _module.Image };
            (_groupedAddress, GroupedGemmPath) = ChooseGroupedPath();
        }
        catch (Exception e)
        {
            _module?.Dispose();
            foreach (CudaCallContext c in _pool)
            {
                c.Dispose();
            }
            _context.Dispose();
            if (e is CudaUnavailableException)
            {
                throw;
            }
            throw new CudaUnavailableException($"CUDA backend initialisation failed: {e.Message}", e);
        }
        Name = $"cuda:{ordinal} ({Info.Name})";
        Capabilities = new KernelCapabilities(
            Device: $"{Info.Name} (sm_{Info.ComputeCapabilityMajor}{Info.ComputeCapabilityMinor}, {Info.MultiprocessorCount} SMs)",
            Simd: "n/a",
            Threads: 1,
            DeviceMemoryBytes: Info.TotalMemoryBytes,
            BatchInvariant: false,
            Numerics: $"cuda-{Options.Precision.ToString().ToLowerInvariant()}",
            DeviceOrdinal: ordinal);
    }

    /// <summary>
    /// Tries to open device <paramref name="ordinal"/> with default options. Never throws for a missing device or
    /// library: returns false with <paramref name="reason"/> naming what is missing.
    /// </summary>
    public static bool TryCreate(int ordinal, out CudaKernelBackend? backend, out string reason) =>
        TryCreate(ordinal, null, out backend, out reason);

    /// <summary>As <see cref="TryCreate(int, out CudaKernelBackend?, out string)"/>, with options.</summary>
    public static bool TryCreate(int ordinal, CudaBackendOptions? options, out CudaKernelBackend? backend, out string reason)
    {
        try
        {
            backend = new CudaKernelBackend(ordinal, options);
            reason = "";
            return true;
        }
        catch (CudaUnavailableException e)
        {
            backend = null;
            reason = e.Message;
            return false;
        }
    }

    /// <summary>
    /// Number of CUDA devices the driver reports, or 0 with <paramref name="reason"/> when the driver library is
    /// missing or <c>cuInit</c> fails. Lets a caller tell "no device" from "a device is present but the backend could
    /// not start on it" (e.g. the kernels failed to compile).
    /// </summary>
    public static int CountDevices(out string reason)
    {
        try
        {
            CudaLibraries.Load(CudaLibraries.Driver);
            int init = CuDriver.cuInit(0);
            if (init != CuDriver.Success)
            {
                reason = $"cuInit failed: {CuDriver.Describe(init)}";
                return 0;
            }
            int result = CuDriver.cuDeviceGetCount(out int count);
            reason = result == CuDriver.Success ? (count == 0 ? "the CUDA driver reports no device" : "") : $"cuDeviceGetCount failed: {CuDriver.Describe(result)}";
            return result == CuDriver.Success ? count : 0;
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException)
        {
            reason = e.Message;
            return 0;
        }
    }

    /// <summary>
    /// Free and total memory of every CUDA device (ordinal order) except those in <paramref name="skip"/>, for choosing a
    /// device before any backend exists (the coordinator's default device: the one with the most free memory). Each
    /// queried device's primary context is retained for the query and released after it (on a real driver that creates
    /// the context if no one in this process holds it: a few hundred MiB for a moment), which is why the devices other
    /// processes use (<paramref name="skip"/>) are not touched. Empty, with <paramref name="reason"/>, when the driver is
    /// missing or reports no device; never throws for that.
    /// </summary>
    public static IReadOnlyList<CudaDeviceMemory> QueryDevices(IReadOnlyCollection<int> skip, out string reason)
    {
        ArgumentNullException.ThrowIfNull(skip);
        int count = CountDevices(out reason);
        var devices = new List<CudaDeviceMemory>(count);
        byte* name = stackalloc byte[256];
        try
        {
            for (int ordinal = 0; ordinal < count; ordinal++)
            {
                if (skip.Contains(ordinal))
                {
                    continue;
                }
                CuDriver.Check(CuDriver.cuDeviceGet(out int device, ordinal), "cuDeviceGet");
                CuDriver.Check(CuDriver.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
                using var context = PrimaryContextHandle.Retain(device);
                context.SetCurrent();
                CuDriver.Check(CuDriver.cuMemGetInfo(out nuint free, out nuint total), "cuMemGetInfo_v2");
                _ = CuDriver.cuCtxSetCurrent(0);
                devices.Add(new CudaDeviceMemory(ordinal, Marshal.PtrToStringUTF8((nint)name) ?? "?", (long)free, (long)total));
            }
        }
        catch (CudaException e)
        {
            reason = $"querying device memory failed: {e.Message}";
            return [];
        }
        return devices;
    }

    /// <summary>
    /// Device memory free right now on this backend's device, bytes (<c>cuMemGetInfo</c> in its context): what every
    /// process, this one included, has not allocated there.
    /// </summary>
    /// <exception cref="CudaException">The driver call failed.</exception>
    public long DeviceFreeBytes()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _context.SetCurrent();
        CuDriver.Check(CuDriver.cuMemGetInfo(out nuint free, out _), "cuMemGetInfo_v2");
        return (long)free;
    }

    /// <inheritdoc />
    public string Name { get; }

    /// <inheritdoc />
    public KernelCapabilities Capabilities { get; }

    /// <summary>The device and library versions in use.</summary>
    public CudaDeviceInfo Info { get; }

    /// <summary>Options this backend was created with.</summary>
    public CudaBackendOptions Options { get; }

    /// <summary>
    /// Which grouped GEMM path <see cref="SwiGluFfnGrouped"/> uses, with the reason when it is not the grouped API
    /// (e.g. <c>per-group cublasGemmEx (cublasGemmGroupedBatchedEx not exported by this cuBLAS)</c>).
    /// </summary>
    public string GroupedGemmPath { get; }

    internal bool UsesGroupedApi => _groupedAddress != 0;

    internal CudaKernelModule Module => _module;

    internal nint ContextHandle => _context.DangerousGetHandle();

    private bool Split => Options.Precision == CudaPrecision.Split;

    private int RowFactor => Split ? 2 : 1;

    private CudaDeviceInfo ReadDeviceInfo(int ordinal, int device)
    {
        byte* name = stackalloc byte[256];
        CuDriver.Check(CuDriver.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int major, CuDriver.AttrComputeCapabilityMajor, device), "cuDeviceGetAttribute(major)");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int minor, CuDriver.AttrComputeCapabilityMinor, device), "cuDeviceGetAttribute(minor)");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int sms, CuDriver.AttrMultiprocessorCount, device), "cuDeviceGetAttribute(multiprocessors)");
        CuDriver.Check(CuDriver.cuDeviceTotalMem(out nuint total, device), "cuDeviceTotalMem_v2");
        CuDriver.Check(CuDriver.cuDriverGetVersion(out int driver), "cuDriverGetVersion");
        CuBlas.Check(CuBlas.cublasCreate(out nint blas), "cublasCreate_v2");
        int blasVersion;
        try
        {
            CuBlas.Check(CuBlas.cublasGetVersion(blas, out blasVersion), "cublasGetVersion_v2");
        }
        finally
        {
            _ = CuBlas.cublasDestroy(blas);
        }
        return new CudaDeviceInfo(ordinal, Marshal.PtrToStringUTF8((nint)name) ?? "?", major, minor, (long)total, sms,
            driver, blasVersion, CudaKernelModule.NvrtcVersion(), "", CudaLibraries.LoadedPath(CudaLibraries.Driver) ?? "?",
            CudaLibraries.LoadedPath(CudaLibraries.Cublas) ?? "?", CudaLibraries.LoadedPath(CudaLibraries.Nvrtc) ?? "?");
    }

    /// <summary>A one-line summary for start-up logs.</summary>
    public string Describe()
    {
        var sb = new StringBuilder();
        sb.Append($"{Name}: sm_{Info.ComputeCapabilityMajor}{Info.ComputeCapabilityMinor}, {Info.MultiprocessorCount} SMs, ");
        sb.Append($"{Info.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, driver CUDA {Info.DriverVersion / 1000}.{Info.DriverVersion % 1000 / 10}, ");
        sb.Append($"cuBLAS {Info.CublasVersion} ({Info.CublasLibrary}), NVRTC {Info.NvrtcVersion} ({Info.NvrtcLibrary}), ");
        sb.Append($"kernels {Info.KernelImage}, precision {Options.Precision}, grouped GEMM {GroupedGemmPath}, device path {(Options.DevicePath ? "on" : "off")}, cuda graphs {(Options.CudaGraphs ? "on" : "off")}, batch invariant: no");
        return sb.ToString();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _context.SetCurrent();
        while (_pool.TryTake(out CudaCallContext? c))
        {
            c.Dispose();
        }
        DisposeGraphs();
        DisposeConstants();
        _module.Dispose();
        _context.Dispose();
    }

    // ---- call context plumbing ----

    /// <summary>
    /// A pooled call context for one op: <c>using var call = BeginCall();</c>, work on <see cref="CudaCall.Context"/>, then
    /// <see cref="CudaCall.Complete"/>. Disposing returns a completed context to the pool and drops one whose call failed
    /// (its stream may hold half-finished work).
    /// </summary>
    internal CudaCall BeginCall() => new(this, Rent());

    private CudaCallContext Rent()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _context.SetCurrent();
        CudaCallContext ctx = _pool.TryTake(out CudaCallContext? c) ? c : new CudaCallContext(_context.DangerousGetHandle());
        ctx.Reset();
        ctx.Transfers = _transfers;
        return ctx;
    }

    /// <summary>Returns a context after a successful call; after a failure the context is dropped (its stream may hold
    /// half-finished work).</summary>
    internal void Return(CudaCallContext ctx, bool ok)
    {
        if (ok && !_disposed)
        {
            _pool.Add(ctx);
        }
        else
        {
            ctx.Dispose();
        }
    }

    internal static ulong Upload<T>(CudaCallContext ctx, ReadOnlySpan<T> source)
        where T : unmanaged
    {
        long bytes = (long)source.Length * sizeof(T);
        ulong device = ctx.Device.Alloc(bytes);
        if (bytes == 0)
        {
            return device;
        }
        ulong host = ctx.Host.Alloc(bytes);
        source.CopyTo(new Span<T>((void*)host, source.Length));
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(device, (void*)host, (nuint)bytes, ctx.Stream.Value), "cuMemcpyHtoDAsync_v2");
        ctx.Transfers?.CountHostToDevice(bytes);
        return device;
    }

    /// <summary>Queues a device→pinned copy; read the returned pinned pointer only after the stream is synchronized.</summary>
    internal static nint EnqueueDownload(CudaCallContext ctx, ulong device, long bytes)
    {
        ulong host = ctx.Host.Alloc(bytes);
        if (bytes > 0)
        {
            CuDriver.Check(CuDriver.cuMemcpyDtoHAsync((void*)host, device, (nuint)bytes, ctx.Stream.Value), "cuMemcpyDtoHAsync_v2");
            ctx.Transfers?.CountDeviceToHost(bytes);
        }
        return (nint)host;
    }

    internal static void Download<T>(CudaCallContext ctx, ulong device, Span<T> destination)
        where T : unmanaged
    {
        nint host = EnqueueDownload(ctx, device, (long)destination.Length * sizeof(T));
        ctx.Stream.Synchronize();
        new ReadOnlySpan<T>((void*)host, destination.Length).CopyTo(destination);
    }

    private CudaWeightMatrix Own(IWeightMatrix w, string parameter)
    {
        ArgumentNullException.ThrowIfNull(w, parameter);
        if (w is not CudaWeightMatrix cw || !ReferenceEquals(cw.Owner, this))
        {
            throw new ArgumentException($"{parameter} was not created by this CUDA backend ({w.GetType().Name})", parameter);
        }
        return cw;
    }

    private static void Require(bool condition, string message, string parameter)
    {
        if (!condition)
        {
            throw new ArgumentException(message, parameter);
        }
    }
}

/// <summary>One op's lease on a pooled <see cref="CudaCallContext"/> (see <see cref="CudaKernelBackend.BeginCall"/>).</summary>
internal readonly ref struct CudaCall(CudaKernelBackend owner, CudaCallContext context)
{
    public CudaCallContext Context { get; } = context;

    /// <summary>Marks the op's work as finished; call last, after the results were read.</summary>
    public void Complete() => Context.Completed = true;

    public void Dispose() => owner.Return(Context, Context.Completed);
}
