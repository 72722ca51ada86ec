using Distributed.Kernels.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// A sequence's KV cache in <see cref="KvBlockPool"/> blocks with a block table per layer. Chunked (RoPE) layers free
/// whole blocks that fall before the chunk of the next query — they keep at most one chunk (plus a step); NoPE layers
/// keep the whole context. For an attention call the visible blocks are gathered into the pool's scratch buffer.
/// Dispose returns every block to the pool (the reservation is the scheduler's to return).
/// </summary>
public sealed class PagedKvCache : IKvCache, IDisposable
{
    private readonly KvBlockPool _pool;
    private readonly Llama4TextConfig _config;
    private readonly List<int>[] _tables;
    private readonly int[] _firstPosition;
    private bool _disposed;

    /// <summary>Creates an empty cache drawing from <paramref name="pool"/>.</summary>
    public PagedKvCache(KvBlockPool pool, Llama4TextConfig config)
    {
        _pool = pool ?? throw new ArgumentNullException(nameof(pool));
        _config = config ?? throw new ArgumentNullException(nameof(config));
        _tables = new List<int>[config.NumLayers];
        _firstPosition = new int[config.NumLayers];
        for (int il = 0; il < _tables.Length; il++)
        {
            _tables[il] = [];
        }
    }

    /// <inheritdoc />
    public int NextPosition { get; private set; }

    /// <summary>Blocks this sequence holds now, over all layers.</summary>
    public int Blocks => _tables.Sum(t => t.Count);

    /// <inheritdoc />
    public (ReadOnlyMemory<float> K, ReadOnlyMemory<float> V, int Keys, int KeyPositionStart) Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int b = _pool.BlockSize, w = _pool.RowWidth;
        var table = _tables[layer];
        int first = NextPosition;
        int chunk = _config.UsesRope(layer) ? _config.AttentionChunkSize : 0;
        int visibleStart = _firstPosition[layer];
        if (chunk > 0)
        {
            int chunkStart = first / chunk * chunk;
            // Blocks entirely before the chunk of the first new query can never be seen again.
            while (table.Count > 0 && _firstPosition[layer] + b <= chunkStart)
            {
                _pool.Free(table[0]);
                table.RemoveAt(0);
                _firstPosition[layer] += b;
            }
            visibleStart = Math.Max(_firstPosition[layer], chunkStart);
        }
        for (int r = 0; r < rows; r++)
        {
            int slot = first + r - _firstPosition[layer];
            int bi = slot / b, off = slot % b;
            while (table.Count <= bi)
            {
                table.Add(_pool.Allocate());
            }
            k.Slice(r * w, w).CopyTo(_pool.K(table[bi]).Slice(off * w, w));
            v.Slice(r * w, w).CopyTo(_pool.V(table[bi]).Slice(off * w, w));
        }

        int keys = first + rows - visibleStart;
        var (sk, sv) = _pool.Scratch(keys);
        for (int p = visibleStart; p < first + rows;)
        {
            int slot = p - _firstPosition[layer];
            int bi = slot / b, off = slot % b;
            int n = Math.Min(b - off, first + rows - p);
            _pool.K(table[bi]).Slice(off * w, n * w).CopyTo(sk.AsSpan((p - visibleStart) * w));
            _pool.V(table[bi]).Slice(off * w, n * w).CopyTo(sv.AsSpan((p - visibleStart) * w));
            p += n;
        }
        return (sk.AsMemory(0, keys * w), sv.AsMemory(0, keys * w), keys, visibleStart);
    }

    /// <inheritdoc />
    public void Advance(int rows) => NextPosition += rows;

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (var table in _tables)
        {
            foreach (int id in table)
            {
                _pool.Free(id);
            }
            table.Clear();
        }
    }
}
