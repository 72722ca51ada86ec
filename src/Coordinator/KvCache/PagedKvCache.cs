using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.KvCache;

/// <summary>
/// One sequence's KV cache in <see cref="KvBlockPool"/> blocks, with a block table per layer.
/// <list type="bullet">
/// <item>Chunked (RoPE) layers release whole blocks that fall before the chunk of the next query (no later query can see
/// them): they hold at most one chunk plus a step. NoPE layers hold the whole context.</item>
/// <item><see cref="TryPrepare"/> takes every block a step will write before the step runs, so a forward never runs out
/// of blocks half way (the scheduler preempts another sequence instead).</item>
/// <item>Copy-on-write: a block held by several sequences (after <see cref="Fork"/>) is copied before this sequence
/// writes into it; full blocks are never written again, so they are shared as they are.</item>
/// <item>Prefix caching: every block that becomes full gets the key of its prefix (<see cref="KvPrefixHash"/>) in the
/// pool; <see cref="AttachPrefix"/> starts a new sequence on the longest cached prefix whose blocks every layer needs.</item>
/// </list>
/// Not thread-safe (the scheduler loop owns it). Dispose releases every block.
/// </summary>
public sealed class PagedKvCache : IKvCache, IDisposable
{
    private readonly KvBlockPool _pool;
    private readonly Llama4TextConfig _config;
    private readonly IReadOnlyList<KvContentSpan>? _content;
    private readonly List<int>[] _tables;
    // Logical block index (position / BlockSize) of each table's first entry.
    private readonly int[] _firstBlock;
    private readonly int[]?[] _tableArrays;
    private readonly int[] _chunk;
    private readonly List<int> _tokens = [];
    private readonly List<KvPrefixHash> _hashes = [];
    private int _preparedPosition = -1;
    private int _preparedRows;
    private bool _disposed;

    /// <summary>Creates an empty cache drawing from <paramref name="pool"/>.</summary>
    /// <param name="pool">The shared pool.</param>
    /// <param name="content">Positions whose embeddings come from content rather than token ids (images), mixed into
    /// the prefix keys of the blocks they overlap; null when the sequence has none.</param>
    public PagedKvCache(KvBlockPool pool, IReadOnlyList<KvContentSpan>? content = null)
    {
        _pool = pool ?? throw new ArgumentNullException(nameof(pool));
        _config = pool.Config;
        _content = content;
        int layers = _config.NumLayers;
        _tables = new List<int>[layers];
        _firstBlock = new int[layers];
        _tableArrays = new int[layers][];
        _chunk = new int[layers];
        for (int il = 0; il < layers; il++)
        {
            _tables[il] = [];
            _chunk[il] = _config.UsesRope(il) ? _config.AttentionChunkSize : 0;
        }
    }

    /// <inheritdoc />
    public int NextPosition { get; private set; }

    /// <summary>Blocks this sequence holds now, over all layers (shared ones included).</summary>
    public int Blocks => _tables.Sum(t => t.Count);

    /// <summary>
    /// Starts this empty cache on the longest cached prefix of <paramref name="tokens"/> that is a whole number of blocks,
    /// at most <paramref name="maxTokens"/> long, and whose blocks every layer needs are in the pool: NoPE layers need
    /// every block of the prefix, chunked layers only those from the chunk of the next query on. Takes a reference on
    /// each of those blocks and returns the prefix length (0 when nothing was found or prefix caching is off).
    /// </summary>
    /// <exception cref="InvalidOperationException">The cache is not empty.</exception>
    public int AttachPrefix(ReadOnlySpan<int> tokens, int maxTokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (NextPosition != 0)
        {
            throw new InvalidOperationException("a prefix can only be attached to an empty cache");
        }
        int b = _pool.BlockSize;
        int blocks = Math.Min(Math.Max(0, maxTokens), tokens.Length) / b;
        if (!_pool.PrefixCaching || blocks == 0)
        {
            return 0;
        }
        var hashes = new KvPrefixHash[blocks];
        var parent = KvPrefixHash.Empty;
        for (int i = 0; i < blocks; i++)
        {
            parent = hashes[i] = KvPrefixHash.Next(parent, i * b, tokens.Slice(i * b, b), _content);
        }
        // NoPE (and unchunked) layers need blocks [0, m): the longest run from block 0 that every such layer has.
        int m = blocks;
        for (int il = 0; il < _tables.Length && m > 0; il++)
        {
            if (_chunk[il] == 0)
            {
                for (int i = 0; i < m; i++)
                {
                    if (!_pool.Contains(new KvBlockKey(hashes[i], il)))
                    {
                        m = i;
                        break;
                    }
                }
            }
        }
        // Chunked layers need the blocks of the next query's chunk before it; that window moves with m, so try each m down.
        for (; m > 0; m--)
        {
            bool ok = true;
            for (int il = 0; il < _tables.Length && ok; il++)
            {
                if (_chunk[il] > 0)
                {
                    for (int i = ChunkFirstBlock(il, m * b); i < m && ok; i++)
                    {
                        ok = _pool.Contains(new KvBlockKey(hashes[i], il));
                    }
                }
            }
            if (ok)
            {
                break;
            }
        }
        if (m == 0)
        {
            return 0;
        }
        for (int il = 0; il < _tables.Length; il++)
        {
            int first = _chunk[il] > 0 ? ChunkFirstBlock(il, m * b) : 0;
            _firstBlock[il] = first;
            for (int i = first; i < m; i++)
            {
                if (!_pool.TryAcquireCached(new KvBlockKey(hashes[i], il), out int id))
                {
                    throw new InvalidOperationException($"cached block {i} of layer {il} vanished while attaching a prefix");
                }
                _tables[il].Add(id);
            }
            _tableArrays[il] = null;
        }
        NextPosition = m * b;
        for (int i = 0; i < m * b; i++)
        {
            _tokens.Add(tokens[i]);
        }
        _hashes.AddRange(hashes.AsSpan(0, m));
        return m * b;
    }

    // First logical block a chunked layer needs when the next query is at `position`: the block holding its chunk's start.
    private int ChunkFirstBlock(int layer, int position) => position / _chunk[layer] * _chunk[layer] / _pool.BlockSize;

    /// <summary>
    /// A second sequence sharing every block of this one (copy-on-write) at the same position, with the same tokens:
    /// the <c>n</c> choices of one prompt.
    /// </summary>
    public PagedKvCache Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var child = new PagedKvCache(_pool, _content) { NextPosition = NextPosition };
        for (int il = 0; il < _tables.Length; il++)
        {
            foreach (int id in _tables[il])
            {
                _pool.AddRef(id);
            }
            child._tables[il].AddRange(_tables[il]);
            child._firstBlock[il] = _firstBlock[il];
        }
        child._tokens.AddRange(_tokens);
        child._hashes.AddRange(_hashes);
        return child;
    }

    /// <summary>
    /// Takes every block that appending <paramref name="rows"/> positions needs on every layer: releases the blocks
    /// chunked layers no longer need, copies a shared partial block this sequence is about to write, and allocates new
    /// blocks. All or nothing: false (nothing taken) when the pool does not have enough blocks.
    /// </summary>
    public bool TryPrepare(int rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        if (_preparedPosition == NextPosition && _preparedRows >= rows)
        {
            return true;
        }
        int b = _pool.BlockSize;
        int first = NextPosition;
        for (int il = 0; il < _tables.Length; il++)
        {
            if (_chunk[il] > 0)
            {
                var table = _tables[il];
                int keepFrom = ChunkFirstBlock(il, first);
                while (table.Count > 0 && _firstBlock[il] < keepFrom)
                {
                    _pool.Release(table[0]);
                    table.RemoveAt(0);
                    _firstBlock[il]++;
                    _tableArrays[il] = null;
                }
                if (table.Count == 0)
                {
                    _firstBlock[il] = keepFrom;
                }
            }
        }
        int need = 0;
        int lastBlock = (first + rows - 1) / b;
        for (int il = 0; il < _tables.Length; il++)
        {
            var table = _tables[il];
            need += Math.Max(0, lastBlock - (_firstBlock[il] + table.Count - 1));
            if (first % b != 0 && _pool.RefCount(table[first / b - _firstBlock[il]]) > 1)
            {
                need++;
            }
        }
        if (need > _pool.AvailableBlocks)
        {
            return false;
        }
        for (int il = 0; il < _tables.Length; il++)
        {
            var table = _tables[il];
            if (first % b != 0)
            {
                int index = first / b - _firstBlock[il];
                int shared = table[index];
                if (_pool.RefCount(shared) > 1)
                {
                    Allocate(out int copy);
                    _pool.Store.CopyBlock(shared, copy);
                    _pool.Release(shared);
                    table[index] = copy;
                    _tableArrays[il] = null;
                }
            }
            while (_firstBlock[il] + table.Count - 1 < lastBlock)
            {
                Allocate(out int id);
                table.Add(id);
                _tableArrays[il] = null;
            }
        }
        _preparedPosition = first;
        _preparedRows = rows;
        return true;
    }

    private void Allocate(out int id)
    {
        if (!_pool.TryAllocate(out id))
        {
            throw new KvCacheExhaustedException($"the KV pool's {_pool.TotalBlocks} blocks are all held by running sequences");
        }
    }

    /// <inheritdoc />
    public KvView Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows)
    {
        Span<int> slots = rows <= 256 ? stackalloc int[rows] : new int[rows];
        var view = Reserve(layer, rows, slots);
        int w = _pool.RowWidth;
        _pool.Store.Write(slots, k[..(rows * w)], v[..(rows * w)]);
        return view;
    }

    /// <inheritdoc />
    public IKvBlockStore Store => _pool.Store;

    /// <inheritdoc />
    public KvView Reserve(int layer, int rows, Span<int> slots)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (slots.Length != rows)
        {
            throw new ArgumentException($"slots has {slots.Length} entries for {rows} rows", nameof(slots));
        }
        if (!(_preparedPosition == NextPosition && _preparedRows >= rows) && !TryPrepare(rows))
        {
            throw new KvCacheExhaustedException($"the KV pool has no room for {rows} more positions of this sequence ({_pool.AvailableBlocks} blocks free)");
        }
        int b = _pool.BlockSize;
        var table = _tables[layer];
        int first = NextPosition;
        int tableStart = _firstBlock[layer] * b;
        for (int r = 0; r < rows; r++)
        {
            int slot = first + r - tableStart;
            slots[r] = table[slot / b] * b + slot % b;
        }
        int visibleStart = _chunk[layer] > 0 ? Math.Max(tableStart, first / _chunk[layer] * _chunk[layer]) : tableStart;
        return new KvView(_pool.Store, TableOf(layer), visibleStart - tableStart, first + rows - visibleStart, visibleStart);
    }

    /// <summary>The block ids of <paramref name="layer"/>'s table and the logical block index of its first entry (tests, diagnostics).</summary>
    internal (int[] Blocks, int FirstBlock) TableSnapshot(int layer) => ([.. _tables[layer]], _firstBlock[layer]);

    // The layer's block table as an array the attention call can read (rebuilt only after the table changed).
    private int[] TableOf(int layer) => _tableArrays[layer] ??= [.. _tables[layer]];

    /// <inheritdoc />
    public void Advance(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        NextPosition += tokens.Length;
        _preparedPosition = -1;
        _preparedRows = 0;
        foreach (int t in tokens)
        {
            _tokens.Add(t);
        }
        if (!_pool.PrefixCaching)
        {
            return;
        }
        // Blocks that are now full get their prefix key, on every layer that still holds them.
        int b = _pool.BlockSize;
        var tokenSpan = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens);
        while ((_hashes.Count + 1) * b <= NextPosition)
        {
            int i = _hashes.Count;
            var hash = KvPrefixHash.Next(i == 0 ? KvPrefixHash.Empty : _hashes[i - 1], i * b, tokenSpan.Slice(i * b, b), _content);
            _hashes.Add(hash);
            for (int il = 0; il < _tables.Length; il++)
            {
                int index = i - _firstBlock[il];
                if (index >= 0 && index < _tables[il].Count)
                {
                    _pool.Register(_tables[il][index], new KvBlockKey(hash, il));
                }
            }
        }
    }

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
                _pool.Release(id);
            }
            table.Clear();
        }
        Array.Clear(_tableArrays);
    }
}
