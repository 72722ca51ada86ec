using System.Buffers;

namespace Distributed.Protocol.Wire;

/// <summary>
/// A byte buffer rented from <see cref="ArrayPool{T}.Shared"/>, returned on <see cref="Dispose"/>. Payloads of up to
/// 40 MiB (4096 rows × 5120 × bf16) would otherwise be fresh LOH arrays per message.
/// </summary>
public sealed class PooledBuffer : IDisposable
{
    private byte[]? _array;

    private PooledBuffer(byte[] array, int length)
    {
        _array = array;
        Length = length;
    }

    /// <summary>Rents a buffer of exactly <paramref name="length"/> usable bytes (contents undefined).</summary>
    public static PooledBuffer Rent(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return new PooledBuffer(length == 0 ? [] : ArrayPool<byte>.Shared.Rent(length), length);
    }

    /// <summary>Usable bytes.</summary>
    public int Length { get; }

    /// <summary>The usable bytes.</summary>
    /// <exception cref="ObjectDisposedException">After <see cref="Dispose"/>.</exception>
    public Memory<byte> Memory => new(_array ?? throw new ObjectDisposedException(nameof(PooledBuffer)), 0, Length);

    /// <summary>The usable bytes.</summary>
    public Span<byte> Span => Memory.Span;

    /// <inheritdoc />
    public void Dispose()
    {
        var array = Interlocked.Exchange(ref _array, null);
        if (array is { Length: > 0 })
        {
            ArrayPool<byte>.Shared.Return(array);
        }
    }
}
