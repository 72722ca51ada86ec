using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Bytes holding one request's rows until its reply has been consumed: a pooled buffer sent inline, or a region of the
/// connection's shared ring (the request then carries only <see cref="Descriptor"/>, and the reply rows come back in
/// the same region).
/// </summary>
public sealed class RowLease : IDisposable
{
    private readonly PooledBuffer? _buffer;
    private readonly SharedRing? _ring;
    private readonly Action<RowLease>? _free;

    private RowLease(PooledBuffer buffer)
    {
        _buffer = buffer;
    }

    private RowLease(SharedRing ring, ulong offset, int length, Action<RowLease> free)
    {
        _ring = ring;
        _free = free;
        Descriptor = new SharedRows { Offset = offset, Length = (ulong)length };
    }

    /// <summary>A lease over a pooled buffer of <paramref name="length"/> bytes.</summary>
    public static RowLease Inline(int length) => new(PooledBuffer.Rent(length));

    internal static RowLease Shared(SharedRing ring, ulong offset, int length, Action<RowLease> free) => new(ring, offset, length, free);

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
            if (!_ring!.TryGetSpan(Descriptor!.Offset, Descriptor.Length, out var span))
            {
                throw new ObjectDisposedException(nameof(RowLease), "the shared ring was closed");
            }
            return span;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _buffer?.Dispose();
        _free?.Invoke(this);
    }
}
