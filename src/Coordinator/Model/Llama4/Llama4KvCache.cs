using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// Keys and values of one sequence, per decoder layer, in fp32 <c>[positions, kv_heads, head_dim]</c>. Matches Llama 4's
/// hybrid cache: RoPE layers (chunked attention, fixed blocks of <c>attention_chunk_size</c>) keep only the keys of the
/// chunk the next query falls in, so their memory is bounded by the chunk size; NoPE layers keep the whole context.
/// Positions are contiguous: a sequence appends position <see cref="NextPosition"/> and onward.
/// </summary>
public sealed class Llama4KvCache : IKvCache
{
    private readonly LayerCache[] _layers;
    private readonly int _rowWidth;

    /// <summary>Creates an empty cache for a model.</summary>
    public Llama4KvCache(Llama4TextConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        _rowWidth = config.NumKvHeads * config.HeadDim;
        _layers = new LayerCache[config.NumLayers];
        for (int il = 0; il < config.NumLayers; il++)
        {
            _layers[il] = new LayerCache(config.UsesRope(il) ? config.AttentionChunkSize : 0);
        }
    }

    /// <summary>The next absolute position this sequence will append.</summary>
    public int NextPosition { get; private set; }

    /// <summary>fp32 bytes held now across layers.</summary>
    public long Bytes => _layers.Sum(l => (long)l.Count * _rowWidth * 2 * sizeof(float));

    /// <summary>fp32 bytes a cache keeping every position on every layer would hold now.</summary>
    public long BytesIfFull => (long)NextPosition * _rowWidth * 2 * sizeof(float) * _layers.Length;

    /// <summary>
    /// Appends the keys/values of positions <c>[NextPosition, NextPosition + rows)</c> to layer <paramref name="layer"/>,
    /// first dropping, on chunked layers, keys of chunks before the one holding <c>NextPosition</c> (no query of this
    /// or any later call can see them). Returns the stored range for the attention call.
    /// </summary>
    /// <param name="k"><c>[rows, kv_heads, head_dim]</c>.</param>
    /// <param name="v"><c>[rows, kv_heads, head_dim]</c>.</param>
    public KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows)
    {
        var l = _layers[layer];
        int first = NextPosition;
        if (l.Count > 0 && l.Start + l.Count != first)
        {
            throw new InvalidOperationException($"layer {layer}: cache holds positions up to {l.Start + l.Count - 1}, append starts at {first}");
        }
        if (l.Count == 0)
        {
            l.Start = first;
        }
        if (l.ChunkSize > 0)
        {
            int chunkStart = first / l.ChunkSize * l.ChunkSize;
            if (l.Start < chunkStart)
            {
                int drop = Math.Min(chunkStart - l.Start, l.Count);
                int keep = l.Count - drop;
                Array.Copy(l.K, drop * _rowWidth, l.K, 0, keep * _rowWidth);
                Array.Copy(l.V, drop * _rowWidth, l.V, 0, keep * _rowWidth);
                l.Count = keep;
                l.Start += drop;
            }
        }
        int need = (l.Count + rows) * _rowWidth;
        if (l.K.Length < need)
        {
            int cap = Math.Max(need, l.K.Length * 2);
            Array.Resize(ref l.K, cap);
            Array.Resize(ref l.V, cap);
        }
        k[..(rows * _rowWidth)].CopyTo(l.K.AsSpan(l.Count * _rowWidth));
        v[..(rows * _rowWidth)].CopyTo(l.V.AsSpan(l.Count * _rowWidth));
        l.Count += rows;
        return new KvView(l.K.AsMemory(0, l.Count * _rowWidth), l.V.AsMemory(0, l.Count * _rowWidth), l.Count, l.Start);
    }

    /// <summary>Marks <paramref name="rows"/> positions as appended on every layer (called once per forward).</summary>
    public void Advance(int rows) => NextPosition += rows;

    private sealed class LayerCache(int chunkSize)
    {
        public int ChunkSize { get; } = chunkSize;
        public float[] K = [];
        public float[] V = [];
        public int Start;
        public int Count;
    }
}
