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
    /// to layer <paramref name="layer"/> and returns contiguous keys/values covering at least every position the new
    /// queries may attend to: <c>K</c>/<c>V</c> are <c>[Keys, kv_heads, head_dim]</c> and key j has position
    /// <c>KeyPositionStart + j</c>. The memory is valid until the next call on this cache.
    /// </summary>
    (ReadOnlyMemory<float> K, ReadOnlyMemory<float> V, int Keys, int KeyPositionStart) Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows);

    /// <summary>Marks <paramref name="rows"/> positions as appended on every layer (called once per forward step).</summary>
    void Advance(int rows);
}
