using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Bytes holding one request's rows until its reply has been consumed: a pooled buffer sent inline, or a region of the
/// connection's shared ring (the request then carries only <see cref="Descriptor"/>, and the reply rows come back in
/// the same region). A ring lease holds a reference on the ring, so the ring stays mapped while the lease lives.
/// </summary>
public sealed class RowLease : IDisposable
{
    private readonly PooledBuffer? _buffer;
    private readonly SharedRing? _ring;
    private readonly Action? _free;
    private int _done;

    private RowLease(PooledBuffer buffer)
    {
        _buffer = buffer;
    }

    private RowLease(SharedRing ring, ulong offset, int length, Action free)
    {
        _ring = ring;
        _free = free;
        Descriptor = new SharedRows { Offset = offset, Length = (ulong)length };
    }

    /// <summary>A lease over a pooled buffer of <paramref name="length"/> bytes.</summary>
    public static RowLease Inline(int length) => new(PooledBuffer.Rent(length));

    /// <summary>A lease of a ring region; the caller has taken a reference on <paramref name="ring"/> for it, given back
    /// (after <paramref name="free"/> returns the region) when the lease ends.</summary>
    internal static RowLease Shared(SharedRing ring, ulong offset, int length, Action free) => new(ring, offset, length, free);

    /// <summary>The ring region, or null for inline rows.</summary>
    public SharedRows? Descriptor { get; }

    /// <summary>The pooled buffer of inline rows.</summary>
    public ReadOnlyMemory<byte> InlineMemory => _buffer?.Memory ?? ReadOnlyMemory<byte>.Empty;

    /// <summary>The bytes to fill with request rows (and, on the shared ring, to read reply rows from).</summary>
    public Span<byte> Span
    {
        get
        {
            if (_buffer is not null)
            {
                return _buffer.Span;
            }
            if (Volatile.Read(ref _done) != 0 || !_ring!.TryGetSpan(Descriptor!.Offset, Descriptor.Length, out var span))
            {
                throw new ObjectDisposedException(nameof(RowLease), "the lease ended");
            }
            return span;
        }
    }

    /// <summary>Ends the lease: the buffer goes back to the pool, or the region back to the ring's allocator.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _done, 1) != 0)
        {
            return;
        }
        _buffer?.Dispose();
        if (_ring is not null)
        {
            _free!();
            _ring.Release();
        }
    }

    /// <summary>
    /// Ends the lease of rows a worker may still write (it never answered): a ring region stays allocated, never handed
    /// to another request (bounded by the ring's size), but this lease's reference on the ring is given back, so the
    /// coordinator's mapping can go with its connection. Inline rows are simply returned.
    /// </summary>
    public void Abandon()
    {
        if (Interlocked.Exchange(ref _done, 1) != 0)
        {
            return;
        }
        _buffer?.Dispose();
        _ring?.Release();
    }
}
