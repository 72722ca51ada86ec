namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// One sequence's keys and values, per decoder layer, as the model sees them. Implementations: <see cref="Llama4KvCache"/>
/// (contiguous, grows on demand: <c>infer</c>) and <see cref="PagedKvCache"/> (fixed-size blocks from a shared
/// <see cref="KvBlockPool"/> with admission by reservation: serving).
/// </summary>
public interface IKvCache
{
    /// <summary>The next absolute position this sequence will append.</summary>
    int NextPosition { get; }

    /// <summary>
    /// Appends the keys/values (<c>[rows, kv_heads, head_dim]</c> fp32) of positions <c>[NextPosition, NextPosition + rows)</c>
    /// to layer <paramref name="layer"/> and returns the keys covering at least every position the new queries may
    /// attend to (key j has position <c>KeyPositionStart + j</c>): contiguous in host memory (<see cref="KvView.K"/>,
    /// <see cref="KvView.V"/>) or held in a block store (<see cref="KvView.Store"/>). Valid until the next call on this cache.
    /// </summary>
    KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows);

    /// <summary>Marks <paramref name="rows"/> positions as appended on every layer (called once per forward step).</summary>
    void Advance(int rows);
}

/// <summary>
/// The keys and values an attention call may see: either contiguous host memory (<see cref="K"/>/<see cref="V"/>
/// <c>[Keys, kv_heads, head_dim]</c>) or, when <see cref="Store"/> is set, rows of a block store: key j is in row
/// <c>s % BlockSize</c> of block <c>BlockTable[s / BlockSize]</c> with <c>s = FirstSlot + j</c> (K/V are empty then).
/// </summary>
public readonly record struct KvView(ReadOnlyMemory<float> K, ReadOnlyMemory<float> V, int Keys, int KeyPositionStart)
{
    /// <summary>The block store holding the keys, or null for contiguous host memory.</summary>
    public Kernels.IKvBlockStore? Store { get; init; }

    /// <summary>Store blocks of the sequence's layer, in position order (with <see cref="Store"/>).</summary>
    public ReadOnlyMemory<int> BlockTable { get; init; }

    /// <summary>Slot of key 0 within <see cref="BlockTable"/> (with <see cref="Store"/>).</summary>
    public int FirstSlot { get; init; }
}
