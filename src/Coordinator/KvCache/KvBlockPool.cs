using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.KvCache;

/// <summary>
/// Fixed-size KV blocks shared by every sequence of a scheduler: one block holds the keys and values of
/// <see cref="BlockSize"/> consecutive positions of ONE layer (<c>2 · BlockSize · kv_heads · head_dim</c> elements in
/// <see cref="DType"/>), and
/// capacity comes from a memory budget. Blocks are reference counted: sequences forked from one prompt (<c>n</c> &gt; 1)
/// and sequences that found their prefix in the cache hold the same block, which is written only while one sequence holds
/// it (copy-on-write, <see cref="PagedKvCache"/>).
/// <para>
/// Prefix cache: a block that is full gets a <see cref="KvBlockKey"/> (the hash of every token up to its end, and its
/// layer). When its last holder releases it, it is not freed but kept, unreferenced, in least-recently-used order; a
/// later sequence with the same prefix takes it back instead of recomputing it. An allocation takes a never-used or
/// unkeyed free block first and evicts the least recently used kept block only when there is none.
/// </para>
/// The data lives in an <see cref="IKvBlockStore"/> from the kernel backend (device memory on CUDA; host memory allocated
/// per block on first use on the CPU). Not thread-safe: one scheduler loop owns it (the counters may be read from any
/// thread). Dispose frees the store.
/// </summary>
public sealed class KvBlockPool : IDisposable
{
    private readonly Llama4TextConfig _config;
    private readonly int[] _refs;
    private readonly KvBlockKey?[] _keys;
    private readonly LinkedListNode<int>?[] _lruNodes;
    private readonly Stack<int> _free = new();
    // Unreferenced blocks that keep a key, least recently used first.
    private readonly LinkedList<int> _lru = new();
    private readonly Dictionary<KvBlockKey, int> _cached = [];
    private int _nextFresh;
    private int _used;
    private long _evictions;

    /// <summary>
    /// Creates a pool of <c>memoryBytes / BlockBytes</c> blocks whose data <paramref name="backend"/> keeps (its own store
    /// when it has one and <paramref name="backendStore"/>; else host memory with its contiguous attention), in
    /// <paramref name="dtype"/> (null: <see cref="KvCacheDTypes.DefaultFor"/> the backend).
    /// </summary>
    /// <param name="prefixCaching">Keep full blocks for reuse by later sequences with the same prefix.</param>
    /// <exception cref="ArgumentOutOfRangeException">Block size not positive, or the budget holds no block.</exception>
    public KvBlockPool(Llama4TextConfig config, int blockSize, long memoryBytes, IKernelBackend backend, bool backendStore = true, bool prefixCaching = true,
        KvCacheDType? dtype = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        _config = config;
        BlockSize = blockSize;
        RowWidth = config.NumKvHeads * config.HeadDim;
        DType = dtype ?? KvCacheDTypes.DefaultFor(backend);
        BlockBytes = BytesPerBlock(config, blockSize, DType);
        long blocks = memoryBytes / BlockBytes;
        if (blocks < 1 || blocks > int.MaxValue / 2 || blocks * blockSize > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(memoryBytes), memoryBytes,
                $"KV budget must hold between 1 and {Math.Min(int.MaxValue / 2, int.MaxValue / blockSize)} blocks of {BlockBytes} bytes");
        }
        TotalBlocks = (int)blocks;
        PrefixCaching = prefixCaching;
        _refs = new int[TotalBlocks];
        _keys = new KvBlockKey?[TotalBlocks];
        _lruNodes = new LinkedListNode<int>?[TotalBlocks];
        Store = KvBlockStores.Create(backend, TotalBlocks, blockSize, RowWidth, backendStore, DType);
    }

    /// <summary>The element type the keys and values are kept in.</summary>
    public KvCacheDType DType { get; }

    /// <summary>Where the keys and values are kept.</summary>
    public IKvBlockStore Store { get; }

    /// <summary>The model the blocks are shaped for.</summary>
    public Llama4TextConfig Config => _config;

    /// <summary>Positions per block.</summary>
    public int BlockSize { get; }

    /// <summary>Floats per position per layer for K (and again for V): <c>kv_heads · head_dim</c>.</summary>
    public int RowWidth { get; }

    /// <summary>Whether full blocks are kept for reuse (<see cref="KvBlockPool"/>).</summary>
    public bool PrefixCaching { get; }

    /// <summary>
    /// Bytes of one block (K and V) of <paramref name="blockSize"/> positions of <paramref name="config"/> in
    /// <paramref name="dtype"/>: <c>2 · blockSize · RowBytes</c> (4, 2 or 1 byte per element; FP8 adds a 4-byte scale per row).
    /// </summary>
    public static long BytesPerBlock(Llama4TextConfig config, int blockSize, KvCacheDType dtype = KvCacheDType.Fp32)
    {
        ArgumentNullException.ThrowIfNull(config);
        return 2L * blockSize * KvCacheDTypes.RowBytes(dtype, (long)config.NumKvHeads * config.HeadDim);
    }

    /// <summary>Bytes of one block (K and V).</summary>
    public long BlockBytes { get; }

    /// <summary>Blocks the budget holds.</summary>
    public int TotalBlocks { get; }

    /// <summary>Blocks held by at least one sequence.</summary>
    public int UsedBlocks => Volatile.Read(ref _used);

    /// <summary>Unreferenced blocks kept for their prefix (reusable, evicted when an allocation needs the room).</summary>
    public int CachedBlocks { get; private set; }

    /// <summary>Blocks an allocation can take now: free ones plus kept ones it may evict.</summary>
    public int AvailableBlocks => TotalBlocks - UsedBlocks;

    /// <summary>Kept blocks evicted to make room, since the pool was created.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>
    /// Worst-case blocks ONE sequence of <paramref name="totalTokens"/> positions can hold at once when it appends at most
    /// <paramref name="maxStepTokens"/> positions per step: NoPE layers keep every position; chunked (RoPE) layers keep
    /// at most the current chunk plus one step plus a partial block. A sequence that needs more can never run.
    /// </summary>
    public int BlocksNeeded(int totalTokens, int maxStepTokens) => BlocksNeeded(_config, BlockSize, totalTokens, maxStepTokens);

    /// <summary><see cref="BlocksNeeded(int, int)"/> for a pool of <paramref name="blockSize"/>-position blocks of <paramref name="config"/>.</summary>
    public static int BlocksNeeded(Llama4TextConfig config, int blockSize, int totalTokens, int maxStepTokens)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        int full = (int)(((long)totalTokens + blockSize - 1) / blockSize);
        int chunkedCap = (int)(((long)config.AttentionChunkSize + maxStepTokens + blockSize - 1) / blockSize + 1);
        long sum = 0;
        for (int il = 0; il < config.NumLayers; il++)
        {
            sum += config.UsesRope(il) && config.AttentionChunkSize > 0 ? Math.Min(full, chunkedCap) : full;
        }
        return (int)Math.Min(int.MaxValue, sum);
    }

    /// <summary>Blocks the same sequence would need if every layer kept every position (the saving of chunked layers).</summary>
    public int BlocksNeededWithoutChunking(int totalTokens) =>
        (int)Math.Min(int.MaxValue, ((long)totalTokens + BlockSize - 1) / BlockSize * _config.NumLayers);

    /// <summary>
    /// Takes a block with one reference: a free one, else the least recently used kept one (its key is dropped).
    /// </summary>
    /// <returns>False when every block is held by a sequence.</returns>
    public bool TryAllocate(out int id)
    {
        if (_free.Count > 0)
        {
            id = _free.Pop();
        }
        else if (_nextFresh < TotalBlocks)
        {
            id = _nextFresh++;
        }
        else if (_lru.First is { } oldest)
        {
            id = oldest.Value;
            _lru.RemoveFirst();
            _lruNodes[id] = null;
            _cached.Remove(_keys[id]!.Value);
            _keys[id] = null;
            CachedBlocks--;
            Interlocked.Increment(ref _evictions);
        }
        else
        {
            id = -1;
            return false;
        }
        _refs[id] = 1;
        Interlocked.Increment(ref _used);
        return true;
    }

    /// <summary>Adds a holder to a held block (a forked sequence).</summary>
    public void AddRef(int id)
    {
        if (_refs[id] <= 0)
        {
            throw new InvalidOperationException($"block {id} is not held; take a kept block back with TryAcquireCached");
        }
        _refs[id]++;
    }

    /// <summary>Holders of block <paramref name="id"/> now.</summary>
    public int RefCount(int id) => _refs[id];

    /// <summary>
    /// Drops one holder; a block nobody holds becomes free, or, when it has a key, is kept for reuse (most recently used).
    /// </summary>
    public void Release(int id)
    {
        if (_refs[id] <= 0)
        {
            throw new InvalidOperationException($"block {id} released more often than it was taken");
        }
        if (--_refs[id] > 0)
        {
            return;
        }
        Interlocked.Decrement(ref _used);
        if (_keys[id] is not null && PrefixCaching)
        {
            _lruNodes[id] = _lru.AddLast(id);
            CachedBlocks++;
        }
        else
        {
            _keys[id] = null;
            _free.Push(id);
        }
    }

    /// <summary>
    /// Gives a full, held block its key so later sequences can find it. No-op when prefix caching is off, when the block
    /// already has a key, or when another block already holds this key (the block then stays private and is freed when
    /// released).
    /// </summary>
    public void Register(int id, KvBlockKey key)
    {
        if (!PrefixCaching || _keys[id] is not null || _refs[id] <= 0)
        {
            return;
        }
        if (_cached.TryAdd(key, id))
        {
            _keys[id] = key;
        }
    }

    /// <summary>Whether a block with <paramref name="key"/> is held or kept (does not take it).</summary>
    public bool Contains(KvBlockKey key) => PrefixCaching && _cached.ContainsKey(key);

    /// <summary>Takes a reference on the block with <paramref name="key"/>, held or kept, and returns its id.</summary>
    public bool TryAcquireCached(KvBlockKey key, out int id)
    {
        if (!PrefixCaching || !_cached.TryGetValue(key, out id))
        {
            id = -1;
            return false;
        }
        if (_refs[id]++ == 0)
        {
            _lru.Remove(_lruNodes[id]!);
            _lruNodes[id] = null;
            CachedBlocks--;
            Interlocked.Increment(ref _used);
        }
        return true;
    }

    /// <inheritdoc />
    public void Dispose() => Store.Dispose();
}
