using Distributed.Kernels;

namespace Distributed.Coordinator.KvCache;

/// <summary>
/// One sequence's keys and values, per decoder layer, as the model sees them: <see cref="PagedKvCache"/>, blocks of a
/// shared <see cref="KvBlockPool"/> whose data lives in the kernel backend's <see cref="IKvBlockStore"/>.
/// </summary>
public interface IKvCache
{
    /// <summary>The next absolute position this sequence will append.</summary>
    int NextPosition { get; }

    /// <summary>
    /// Appends the keys/values (<c>[rows, kv_heads, head_dim]</c> fp32) of positions <c>[NextPosition, NextPosition + rows)</c>
    /// to layer <paramref name="layer"/> and returns the keys covering at least every position the new queries may
    /// attend to (key j has position <c>KeyPositionStart + j</c>). Valid until the next call on this cache.
    /// </summary>
    /// <exception cref="KvCacheExhaustedException">The pool has no block left for a new position.</exception>
    KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows);

    /// <summary>The store the sequence's keys and values are kept in (the pool's).</summary>
    IKvBlockStore Store { get; }

    /// <summary>
    /// <see cref="Append"/> for a caller that writes the rows itself (the device-resident path scatters them from device
    /// memory with <c>CudaDeviceStep.KvWrite</c>): takes the blocks for positions <c>[NextPosition, NextPosition + rows)</c>
    /// of <paramref name="layer"/>, fills <paramref name="slots"/> with their store rows, and returns the same view as
    /// Append. The caller must write every slot before the view is read.
    /// </summary>
    /// <exception cref="KvCacheExhaustedException">The pool has no block left for a new position.</exception>
    /// <exception cref="ArgumentException"><paramref name="slots"/> is not <paramref name="rows"/> long.</exception>
    KvView Reserve(int layer, int rows, Span<int> slots);

    /// <summary>
    /// Marks <paramref name="tokens"/> as appended at <c>[NextPosition, NextPosition + tokens.Length)</c> on every layer
    /// (called once per forward step, after every layer's <see cref="Append"/>).
    /// </summary>
    void Advance(ReadOnlySpan<int> tokens);
}

/// <summary>
/// The keys and values one attention call may see, in <see cref="Store"/>: key j is in row <c>s % BlockSize</c> of
/// block <c>BlockTable[s / BlockSize]</c> with <c>s = FirstSlot + j</c>, at position <c>KeyPositionStart + j</c>.
/// </summary>
/// <param name="Store">Where the keys are kept.</param>
/// <param name="BlockTable">The sequence's blocks of this layer, in position order.</param>
/// <param name="FirstSlot">Slot of key 0 within <paramref name="BlockTable"/>.</param>
/// <param name="Keys">Keys visible to the call.</param>
/// <param name="KeyPositionStart">Absolute position of key 0.</param>
public readonly record struct KvView(IKvBlockStore Store, ReadOnlyMemory<int> BlockTable, int FirstSlot, int Keys, int KeyPositionStart);

/// <summary>The KV pool has no free block for a position a step needs (the scheduler prevents it by preparing steps).</summary>
public sealed class KvCacheExhaustedException(string message) : InvalidOperationException(message);
