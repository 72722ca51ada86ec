using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// Fixed-size KV blocks shared by every sequence of a scheduler: one block holds the keys and values of
/// <see cref="BlockSize"/> consecutive positions of ONE layer (<c>2 · BlockSize · kv_heads · head_dim</c> elements in
/// <see cref="DType"/>).
/// Capacity comes from a memory budget. Admission is by reservation: a sequence reserves its worst case up front
/// (<see cref="BlocksNeeded(int, int)"/>), so a running sequence never runs out of blocks mid-step and nothing is ever preempted.
/// The data lives in an <see cref="IKvBlockStore"/> from the kernel backend (device memory on CUDA, so attention reads
/// the keys where they are; host memory, allocated per block on first use, on the CPU); the pool keeps the free list.
/// Not thread-safe: one scheduler loop owns it (reservations are synchronized). Dispose frees the store.
/// </summary>
public sealed class KvBlockPool : IDisposable
{
    private readonly Llama4TextConfig _config;
    private readonly Stack<int> _free = new();
    private readonly Lock _reserveLock = new();
    private int _nextFresh;
    private int _reserved;

    /// <summary>
    /// Creates a pool of <c>memoryBytes / BlockBytes</c> blocks whose data <paramref name="backend"/> keeps (its own store
    /// when it has one and <paramref name="backendStore"/>; else host memory with its contiguous attention), in
    /// <paramref name="dtype"/> (null: <see cref="KvCacheDTypes.DefaultFor"/> the backend).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Block size not positive, or the budget holds no block.</exception>
    public KvBlockPool(Llama4TextConfig config, int blockSize, long memoryBytes, IKernelBackend backend, bool backendStore = true,
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
        Store = KvBlockStores.Create(backend, TotalBlocks, blockSize, RowWidth, backendStore, DType);
    }

    /// <summary>The element type the keys and values are kept in.</summary>
    public KvCacheDType DType { get; }

    /// <summary>Where the keys and values are kept.</summary>
    public IKvBlockStore Store { get; }

    /// <summary>Positions per block.</summary>
    public int BlockSize { get; }

    /// <summary>Floats per position per layer for K (and again for V): <c>kv_heads · head_dim</c>.</summary>
    public int RowWidth { get; }

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

    /// <summary>Blocks holding data now.</summary>
    public int UsedBlocks { get; private set; }

    /// <summary>Blocks reserved by admitted sequences.</summary>
    public int ReservedBlocks
    {
        get
        {
            lock (_reserveLock)
            {
                return _reserved;
            }
        }
    }

    /// <summary>
    /// Worst-case blocks a sequence of <paramref name="totalTokens"/> positions can hold at once when it appends at most
    /// <paramref name="maxStepTokens"/> positions per step: NoPE layers keep every position; chunked (RoPE) layers keep
    /// at most the current chunk plus one step plus a partial block.
    /// </summary>
    public int BlocksNeeded(int totalTokens, int maxStepTokens) => BlocksNeeded(_config, BlockSize, totalTokens, maxStepTokens);

    /// <summary><see cref="BlocksNeeded(int, int)"/> for a pool of <paramref name="blockSize"/>-position blocks of <paramref name="config"/>.</summary>
    public static int BlocksNeeded(Llama4TextConfig config, int blockSize, int totalTokens, int maxStepTokens)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        int full = (totalTokens + blockSize - 1) / blockSize;
        int chunkedCap = (config.AttentionChunkSize + maxStepTokens + blockSize - 1) / blockSize + 1;
        long sum = 0;
        for (int il = 0; il < config.NumLayers; il++)
        {
            sum += config.UsesRope(il) && config.AttentionChunkSize > 0 ? Math.Min(full, chunkedCap) : full;
        }
        return (int)Math.Min(int.MaxValue, sum);
    }

    /// <summary>Blocks the same sequence would need if every layer kept every position (the saving of chunked layers).</summary>
    public int BlocksNeededWithoutChunking(int totalTokens) =>
        (int)Math.Min(int.MaxValue, (long)(totalTokens + BlockSize - 1) / BlockSize * _config.NumLayers);

    /// <summary>Reserves <paramref name="blocks"/> if they fit in what is not yet reserved.</summary>
    public bool TryReserve(int blocks)
    {
        lock (_reserveLock)
        {
            if (blocks < 0 || blocks > TotalBlocks - _reserved)
            {
                return false;
            }
            _reserved += blocks;
            return true;
        }
    }

    /// <summary>Returns a reservation.</summary>
    public void Unreserve(int blocks)
    {
        lock (_reserveLock)
        {
            _reserved = Math.Max(0, _reserved - blocks);
        }
    }

    internal int Allocate()
    {
        int id;
        if (_free.Count > 0)
        {
            id = _free.Pop();
        }
        else if (_nextFresh < TotalBlocks)
        {
            id = _nextFresh++;
        }
        else
        {
            throw new InvalidOperationException("KV block pool exhausted: a sequence exceeded its reservation");
        }
        UsedBlocks++;
        return id;
    }

    internal void Free(int id)
    {
        _free.Push(id);
        UsedBlocks--;
    }

    /// <inheritdoc />
    public void Dispose() => Store.Dispose();
}
