using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// A sequence's KV cache in <see cref="KvBlockPool"/> blocks with a block table per layer. Chunked (RoPE) layers free
/// whole blocks that fall before the chunk of the next query — they keep at most one chunk (plus a step); NoPE layers
/// keep the whole context. Keys and values go to the pool's block store; an attention call reads them there through the
/// layer's block table (the CUDA store keeps them in device memory; the host store gathers the visible rows).
/// Dispose returns every block to the pool (the reservation is the scheduler's to return).
/// </summary>
public sealed class PagedKvCache : IKvCache, IDisposable
{
    private readonly KvBlockPool _pool;
    private readonly Llama4TextConfig _config;
    private readonly List<int>[] _tables;
    private readonly int[] _firstPosition;
    private readonly int[]?[] _tableArrays;
    private bool _disposed;

    /// <summary>Creates an empty cache drawing from <paramref name="pool"/>.</summary>
    public PagedKvCache(KvBlockPool pool, Llama4TextConfig config)
    {
        _pool = pool ?? throw new ArgumentNullException(nameof(pool));
        _config = config ?? throw new ArgumentNullException(nameof(config));
        _tables = new List<int>[config.NumLayers];
        _firstPosition = new int[config.NumLayers];
        _tableArrays = new int[config.NumLayers][];
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
    public KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows)
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
                _tableArrays[layer] = null;
                _firstPosition[layer] += b;
            }
            visibleStart = Math.Max(_firstPosition[layer], chunkStart);
        }
        Span<int> slots = rows <= 256 ? stackalloc int[rows] : new int[rows];
        for (int r = 0; r < rows; r++)
        {
            int slot = first + r - _firstPosition[layer];
            int bi = slot / b, off = slot % b;
            while (table.Count <= bi)
            {
                table.Add(_pool.Allocate());
                _tableArrays[layer] = null;
            }
            slots[r] = table[bi] * b + off;
        }
        _pool.Store.Write(slots, k[..(rows * w)], v[..(rows * w)]);

        int keys = first + rows - visibleStart;
        int firstSlot = visibleStart - _firstPosition[layer];
        return new KvView(ReadOnlyMemory<float>.Empty, ReadOnlyMemory<float>.Empty, keys, visibleStart)
        {
            Store = _pool.Store,
            BlockTable = TableOf(layer),
            FirstSlot = firstSlot,
        };
    }

    // The layer's block table as an array the attention call can read (rebuilt only after the table changed).
    private int[] TableOf(int layer) => _tableArrays[layer] ??= [.. _tables[layer]];

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
        for (int il = 0; il < _tableArrays.Length; il++)
        {
            _tableArrays[il] = null;
        }
    }
}
