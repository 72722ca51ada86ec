using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// Everything one in-flight backend call uses: a stream, a cuBLAS handle bound to it, a device scratch arena, a pinned
/// host staging arena and two timing events. The backend keeps a pool of these, one per concurrent caller, so
/// concurrent calls never share a stream or a cuBLAS handle.
/// </summary>
internal sealed class CudaCallContext : IDisposable
{
    private readonly nint _context;

    public CudaCallContext(nint context)
    {
        _context = context;
        Stream = StreamHandle.Create(context);
        try
        {
            Blas = CublasHandle.Create(context, Stream);
            Device = new BumpArena(bytes =>
            {
                DeviceBuffer b = DeviceBuffer.Allocate(context, bytes);
                return (b, b.Pointer);
            });
            Host = new BumpArena(bytes =>
            {
                PinnedBuffer b = PinnedBuffer.Allocate(context, bytes);
                return (b, (ulong)b.Pointer);
            });
            Start = EventHandle.Create(context);
            Stop = EventHandle.Create(context);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public StreamHandle Stream { get; }

    public CublasHandle Blas { get; } = null!;

    /// <summary>Device scratch for the current call (reset between calls).</summary>
    public BumpArena Device { get; } = null!;

    /// <summary>Pinned host staging for the current call (reset between calls).</summary>
    public BumpArena Host { get; } = null!;

    public EventHandle Start { get; } = null!;

    public EventHandle Stop { get; } = null!;

    /// <summary>The owning backend's copy counters (set when the context is rented); null counts nothing.</summary>
    public CudaTransferCounters? Transfers { get; set; }

    /// <summary>Set by <see cref="CudaCall.Complete"/>: the call's work finished, the context may serve the next call.</summary>
    public bool Completed { get; set; }

    /// <summary>
    /// A pinned buffer of at least <paramref name="bytes"/> kept across calls (the device step's reusable staging for
    /// its per-layer downloads and uploads); grows, never shrinks. The caller makes sure no queued copy still uses it.
    /// </summary>
    public nint Staging(long bytes)
    {
        if (_staging is null || _staging.Bytes < bytes)
        {
            _staging?.Dispose();
            _staging = null;
            _staging = PinnedBuffer.Allocate(_context, Math.Max(bytes, 1 << 16));
        }
        return _staging.Pointer;
    }

    private PinnedBuffer? _staging;

    /// <summary>Starts a new call: scratch from the previous call is reused (the stream was synchronized at its end).</summary>
    public void Reset()
    {
        Device.Reset();
        Host.Reset();
        Completed = false;
    }

    public void Dispose()
    {
        _staging?.Dispose();
        Start?.Dispose();
        Stop?.Dispose();
        Device?.Dispose();
        Host?.Dispose();
        Blas?.Dispose();
        Stream.Dispose();
    }
}

/// <summary>
/// Bump allocator over chunks of device or pinned memory. Allocations are 256-byte aligned (what cuBLAS's tensor-core
/// paths and 16-byte vector loads want). A call that outgrows the current chunk gets another; the next
/// <see cref="Reset"/> replaces several chunks by one of the high-water size, so steady-state calls allocate nothing.
/// </summary>
internal sealed class BumpArena : IDisposable
{
    private const long Alignment = 256;
    private const long MinChunk = 1 << 20;

    private readonly Func<long, (IDisposable Owner, ulong Base)> _allocate;
    private readonly List<(IDisposable Owner, ulong Base, long Size)> _chunks = [];
    private int _current;
    private long _offset;
    private long _used;

    public BumpArena(Func<long, (IDisposable Owner, ulong Base)> allocate)
    {
        _allocate = allocate;
    }

    /// <summary>Bytes currently held.</summary>
    public long CapacityBytes => _chunks.Sum(c => c.Size);

    /// <summary>
    /// Counts the times memory this arena handed out was freed (a <see cref="Reset"/> that merged chunks, or
    /// <see cref="Dispose"/>): a CUDA graph captured at one generation holds addresses that are only valid while the
    /// generation stays the same.
    /// </summary>
    public long Generation { get; private set; }

    /// <summary>
    /// While set (a CUDA graph capture is recording), an allocation that needs a new chunk throws
    /// <see cref="InvalidOperationException"/> instead of allocating (an allocation is illegal during a capture, and the
    /// capture would bake in memory that the next merge frees); frozen with <c>forbidAll</c> (see
    /// <see cref="FreezeForCapture"/>) every allocation throws (pinned staging: a captured copy would read it at replay,
    /// when it holds something else).
    /// </summary>
    public bool Frozen => _frozen != 0;

    private int _frozen; // 0: not frozen, 1: no new chunk, 2: no allocation at all

    /// <summary>Freezes the arena for a capture (see <see cref="Frozen"/>); <see cref="Thaw"/> ends it.</summary>
    public void FreezeForCapture(bool forbidAll) => _frozen = forbidAll ? 2 : 1;

    /// <summary>Ends <see cref="FreezeForCapture"/>.</summary>
    public void Thaw() => _frozen = 0;

    /// <summary>Returns <paramref name="bytes"/> of scratch, valid until the next <see cref="Reset"/>.</summary>
    public ulong Alloc(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if (_frozen == 2)
        {
            throw new InvalidOperationException($"an allocation of {bytes} bytes of pinned staging during a CUDA graph capture (a captured copy would read it at every replay)");
        }
        long size = Math.Max(Alignment, (bytes + Alignment - 1) / Alignment * Alignment);
        while (_current < _chunks.Count)
        {
            var chunk = _chunks[_current];
            if (_offset + size <= chunk.Size)
            {
                ulong p = chunk.Base + (ulong)_offset;
                _offset += size;
                _used += size;
                return p;
            }
            _current++;
            _offset = 0;
        }
        if (_frozen != 0)
        {
            throw new InvalidOperationException($"the scratch arena needs a new chunk for {bytes} bytes during a CUDA graph capture (it holds {CapacityBytes} bytes)");
        }
        long chunkSize = Math.Max(MinChunk, Math.Max(size, CapacityBytes));
        var (owner, baseAddress) = _allocate(chunkSize);
        _chunks.Add((owner, baseAddress, chunkSize));
        _current = _chunks.Count - 1;
        _offset = size;
        _used += size;
        return baseAddress;
    }

    /// <summary>The arena's current fill, for <see cref="Release"/>.</summary>
    public (int Chunk, long Offset, long Used) Mark() => (_current, _offset, _used);

    /// <summary>
    /// Returns everything allocated since <paramref name="mark"/> (the chunks stay). Device scratch may be released as
    /// soon as the work that uses it is queued: later work on the same stream runs after it.
    /// </summary>
    public void Release((int Chunk, long Offset, long Used) mark) => (_current, _offset, _used) = mark;

    public void Reset()
    {
        if (_chunks.Count > 1)
        {
            long total = Math.Max(_used, CapacityBytes);
            foreach (var chunk in _chunks)
            {
                chunk.Owner.Dispose();
            }
            _chunks.Clear();
            Generation++;
            var (owner, baseAddress) = _allocate(total);
            _chunks.Add((owner, baseAddress, total));
        }
        _current = 0;
        _offset = 0;
        _used = 0;
    }

    public void Dispose()
    {
        foreach (var chunk in _chunks)
        {
            chunk.Owner.Dispose();
        }
        _chunks.Clear();
        Generation++;
    }
}
