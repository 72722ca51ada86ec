namespace Distributed.Kernels;

/// <summary>
/// The keys and values of a paged KV cache where the kernels that read them live: <see cref="Blocks"/> blocks of
/// <see cref="BlockSize"/> rows of <see cref="RowWidth"/> elements (<c>kv_heads · head_dim</c>, kept in
/// <see cref="DType"/>; written and read as floats) for K and again for V. Row
/// <c>slot = block · BlockSize + offset</c>. The caller (the cache) owns the block bookkeeping; the store only holds the
/// data and runs attention over a block table. A CUDA backend keeps it in device memory, so an attention call moves
/// only the queries, the table and the output across PCIe, never the context. Not thread-safe: one scheduler owns it.
/// </summary>
public interface IKvBlockStore : IDisposable
{
    /// <summary>Blocks the store holds.</summary>
    int Blocks { get; }

    /// <summary>Rows per block.</summary>
    int BlockSize { get; }

    /// <summary>Elements per row of K (and of V).</summary>
    int RowWidth { get; }

    /// <summary>The element type rows are kept in (rounded once at <see cref="Write"/>).</summary>
    KvCacheDType DType { get; }

    /// <summary>Where the data lives, for logs (<c>host</c>, <c>cuda:0</c>).</summary>
    string Location { get; }

    /// <summary>Writes row r of <paramref name="k"/> and <paramref name="v"/> (<c>[rows, RowWidth]</c>) to <c>slots[r]</c>.</summary>
    /// <exception cref="ArgumentException">A slot outside the store, or lengths that do not match.</exception>
    void Write(ReadOnlySpan<int> slots, ReadOnlySpan<float> k, ReadOnlySpan<float> v);

    /// <summary>
    /// Copies every row of block <paramref name="source"/> (K and V, whatever their element format) over block
    /// <paramref name="destination"/>: the copy of a copy-on-write block shared by several sequences.
    /// </summary>
    /// <exception cref="ArgumentException">A block outside the store, or the same block twice.</exception>
    void CopyBlock(int source, int destination);

    /// <summary>
    /// <see cref="IKernelBackend.Attention"/> over keys held in the store: key j (position
    /// <paramref name="keyPositionStart"/> + j) is in row <c>s % BlockSize</c> of block <c>blockTable[s / BlockSize]</c>
    /// with <c>s = firstSlot + j</c>. Same mask, GQA and results as the contiguous call on the same keys.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that do not match, or a table entry outside the store.</exception>
    void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable, int firstSlot, int keys,
        int keyPositionStart, in AttentionParams p, Span<float> output);

    /// <summary>
    /// <see cref="Attention"/> for several sequences in one call (one batched step: the CUDA store uploads and launches
    /// once for all of them). Sequence i owns the next <see cref="KvSequenceView.Rows"/> rows of <paramref name="q"/>,
    /// <paramref name="queryPositions"/> and <paramref name="output"/>. Each row's result depends only on its own sequence.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that do not match, or a table entry outside the store.</exception>
    void AttentionBatch(ReadOnlySpan<float> q, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences, in AttentionParams p,
        Span<float> output);
}

/// <summary>One sequence of a batched <see cref="IKvBlockStore.AttentionBatch"/> call.</summary>
/// <param name="Rows">Its query rows (consecutive in the call's q, positions and output, in sequence order).</param>
/// <param name="BlockTable">Its layer's block table.</param>
/// <param name="FirstSlot">Slot of key 0 within the table.</param>
/// <param name="Keys">Keys it may see.</param>
/// <param name="KeyPositionStart">Absolute position of key 0.</param>
public readonly record struct KvSequenceView(int Rows, ReadOnlyMemory<int> BlockTable, int FirstSlot, int Keys, int KeyPositionStart);

/// <summary>A backend that keeps KV blocks in its own memory (see <see cref="KvBlockStores.Create"/>).</summary>
public interface IKvBlockStoreFactory
{
    /// <summary>Allocates a store of <paramref name="blocks"/> blocks whose rows are kept in <paramref name="dtype"/>.</summary>
    /// <exception cref="ArgumentException">Non-positive sizes or an unknown dtype.</exception>
    IKvBlockStore CreateKvBlockStore(int blocks, int blockSize, int rowWidth, KvCacheDType dtype = KvCacheDType.Fp32);
}

/// <summary>Picks the store for a backend.</summary>
public static class KvBlockStores
{
    /// <summary>
    /// The backend's own store when it has one (<see cref="IKvBlockStoreFactory"/>) and <paramref name="preferBackend"/>,
    /// else host memory (<see cref="HostKvBlockStore"/>), whose attention gathers the visible rows and calls the
    /// backend's contiguous <see cref="IKernelBackend.Attention"/>; rows kept in <paramref name="dtype"/>.
    /// </summary>
    public static IKvBlockStore Create(IKernelBackend backend, int blocks, int blockSize, int rowWidth, bool preferBackend = true,
        KvCacheDType dtype = KvCacheDType.Fp32)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return preferBackend && backend is IKvBlockStoreFactory factory
            ? factory.CreateKvBlockStore(blocks, blockSize, rowWidth, dtype)
            : new HostKvBlockStore(backend, blocks, blockSize, rowWidth, dtype);
    }

    /// <summary>Shape checks shared by every store; throws <see cref="ArgumentException"/> naming the problem.</summary>
    public static void ValidateWrite(IKvBlockStore store, ReadOnlySpan<int> slots, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        ArgumentNullException.ThrowIfNull(store);
        long expected = (long)slots.Length * store.RowWidth;
        if (k.Length != expected || v.Length != expected)
        {
            throw new ArgumentException($"k and v must hold slots × RowWidth = {slots.Length} × {store.RowWidth} floats, got {k.Length} and {v.Length}");
        }
        long rows = (long)store.Blocks * store.BlockSize;
        for (int i = 0; i < slots.Length; i++)
        {
            if ((uint)slots[i] >= rows)
            {
                throw new ArgumentException($"slot {slots[i]} (entry {i}) is outside the store's {rows} rows", nameof(slots));
            }
        }
    }

    /// <summary>Checks of <see cref="IKvBlockStore.CopyBlock"/>: both blocks inside the store and distinct.</summary>
    public static void ValidateCopy(IKvBlockStore store, int source, int destination)
    {
        ArgumentNullException.ThrowIfNull(store);
        if ((uint)source >= (uint)store.Blocks || (uint)destination >= (uint)store.Blocks || source == destination)
        {
            throw new ArgumentException($"cannot copy block {source} to block {destination}: both must be distinct blocks of the store's {store.Blocks}", nameof(source));
        }
    }

    /// <summary>Checks of <see cref="IKvBlockStore.AttentionBatch"/>: the rows add up, and every sequence passes <see cref="ValidateAttention"/>.</summary>
    public static void ValidateAttentionBatch(IKvBlockStore store, ReadOnlySpan<float> q, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences,
        in AttentionParams p, ReadOnlySpan<float> output) =>
        ValidateAttentionBatch(store, q.Length, queryPositions, sequences, p, output.Length);

    /// <summary>
    /// As <see cref="ValidateAttentionBatch(IKvBlockStore, ReadOnlySpan{float}, ReadOnlySpan{int}, ReadOnlySpan{KvSequenceView}, in AttentionParams, ReadOnlySpan{float})"/>
    /// for queries and output held elsewhere (device memory): only their lengths in floats are checked.
    /// </summary>
    public static void ValidateAttentionBatch(IKvBlockStore store, long qLength, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences,
        in AttentionParams p, long outputLength)
    {
        ArgumentNullException.ThrowIfNull(store);
        p.Validate();
        long rows = 0;
        foreach (var s in sequences)
        {
            if (s.Rows < 0)
            {
                throw new ArgumentException($"a sequence has {s.Rows} rows", nameof(sequences));
            }
            rows += s.Rows;
        }
        int width = p.Heads * p.HeadDim;
        if (queryPositions.Length != rows || qLength != rows * width || outputLength != rows * width)
        {
            throw new ArgumentException($"the sequences have {rows} rows: q/output need {rows * width} floats and queryPositions {rows} entries, got {qLength}, {outputLength}, {queryPositions.Length}");
        }
        int r = 0;
        foreach (var s in sequences)
        {
            ValidateAttentionLengths(store, (long)s.Rows * width, s.Rows, queryPositions.Slice(r, s.Rows), s.BlockTable.Span, s.FirstSlot, s.Keys,
                s.KeyPositionStart, p, (long)s.Rows * width);
            r += s.Rows;
        }
    }

    /// <summary>Shape checks of <see cref="IKvBlockStore.Attention"/>.</summary>
    public static void ValidateAttention(IKvBlockStore store, ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions,
        ReadOnlySpan<int> blockTable, int firstSlot, int keys, int keyPositionStart, in AttentionParams p, ReadOnlySpan<float> output) =>
        ValidateAttentionLengths(store, q.Length, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output.Length);

    private static void ValidateAttentionLengths(IKvBlockStore store, long qLength, int rows, ReadOnlySpan<int> queryPositions,
        ReadOnlySpan<int> blockTable, int firstSlot, int keys, int keyPositionStart, in AttentionParams p, long outputLength)
    {
        ArgumentNullException.ThrowIfNull(store);
        p.Validate();
        if (p.KvHeads * p.HeadDim != store.RowWidth)
        {
            throw new ArgumentException($"kv_heads × head_dim = {p.KvHeads * p.HeadDim} does not match the store's RowWidth {store.RowWidth}");
        }
        long qElements = (long)rows * p.Heads * p.HeadDim;
        if (rows < 0 || qLength != qElements || outputLength != qElements || queryPositions.Length != rows)
        {
            throw new ArgumentException($"q/output must hold rows × heads × head_dim = {qElements} floats and queryPositions {rows} entries; got {qLength}, {outputLength}, {queryPositions.Length}");
        }
        if (keys < 0 || firstSlot < 0 || keyPositionStart < 0)
        {
            throw new ArgumentException($"keys ({keys}), firstSlot ({firstSlot}) and keyPositionStart ({keyPositionStart}) must be ≥ 0");
        }
        long lastSlot = (long)firstSlot + keys - 1;
        if (keys > 0 && lastSlot / store.BlockSize >= blockTable.Length)
        {
            throw new ArgumentException($"keys up to slot {lastSlot} need {lastSlot / store.BlockSize + 1} table entries, the table has {blockTable.Length}", nameof(blockTable));
        }
        for (int i = 0; i < blockTable.Length; i++)
        {
            if ((uint)blockTable[i] >= (uint)store.Blocks)
            {
                throw new ArgumentException($"block table entry {i} = {blockTable[i]} is outside the store's {store.Blocks} blocks", nameof(blockTable));
            }
        }
        for (int i = 0; i < queryPositions.Length; i++)
        {
            if (queryPositions[i] < 0)
            {
                throw new ArgumentException($"queryPositions[{i}] = {queryPositions[i]} is negative", nameof(queryPositions));
            }
        }
    }
}

/// <summary>
/// KV blocks in host memory, each allocated on first write and kept for reuse, in <see cref="DType"/>. Attention gathers
/// (and decodes) the visible rows into an fp32 scratch buffer and runs the backend's contiguous attention on it (the CPU
/// path; the result is the contiguous call's on the decoded keys and values).
/// </summary>
public sealed class HostKvBlockStore : IKvBlockStore
{
    private readonly IKernelBackend _backend;
    private readonly Array?[] _k;
    private readonly Array?[] _v;
    private readonly float[]?[] _kScales;
    private readonly float[]?[] _vScales;
    private float[] _scratchK = [];
    private float[] _scratchV = [];

    /// <summary>Creates an empty store; block memory is allocated when a block is first written.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Non-positive sizes, too many rows, or an unknown dtype.</exception>
    public HostKvBlockStore(IKernelBackend backend, int blocks, int blockSize, int rowWidth, KvCacheDType dtype = KvCacheDType.Fp32)
    {
        _backend = backend ?? throw new ArgumentNullException(nameof(backend));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rowWidth);
        if ((long)blocks * blockSize > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(blocks), $"blocks × blockSize = {(long)blocks * blockSize} rows exceeds {int.MaxValue}");
        }
        if (!Enum.IsDefined(dtype))
        {
            throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV cache dtype");
        }
        Blocks = blocks;
        BlockSize = blockSize;
        RowWidth = rowWidth;
        DType = dtype;
        _k = new Array[blocks];
        _v = new Array[blocks];
        _kScales = new float[blocks][];
        _vScales = new float[blocks][];
    }

    /// <inheritdoc />
    public int Blocks { get; }

    /// <inheritdoc />
    public int BlockSize { get; }

    /// <inheritdoc />
    public int RowWidth { get; }

    /// <inheritdoc />
    public KvCacheDType DType { get; }

    /// <inheritdoc />
    public string Location => "host";

    /// <inheritdoc />
    public void Write(ReadOnlySpan<int> slots, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        KvBlockStores.ValidateWrite(this, slots, k, v);
        int w = RowWidth;
        for (int r = 0; r < slots.Length; r++)
        {
            int block = slots[r] / BlockSize, off = slots[r] % BlockSize;
            Put(_k, _kScales, block, off, k.Slice(r * w, w));
            Put(_v, _vScales, block, off, v.Slice(r * w, w));
        }
    }

    // Row `off` of `block` ← row, rounded to the store's dtype.
    private void Put(Array?[] data, float[]?[] scales, int block, int off, ReadOnlySpan<float> row)
    {
        int w = RowWidth;
        switch (DType)
        {
            case KvCacheDType.Fp32:
                row.CopyTo(((float[])(data[block] ??= new float[BlockSize * w])).AsSpan(off * w, w));
                break;
            case KvCacheDType.Bf16:
                var bits = ((ushort[])(data[block] ??= new ushort[BlockSize * w])).AsSpan(off * w, w);
                for (int i = 0; i < w; i++)
                {
                    bits[i] = DTypeInfo.FloatToBf16(row[i]);
                }
                break;
            default:
                var codes = ((byte[])(data[block] ??= new byte[BlockSize * w])).AsSpan(off * w, w);
                (scales[block] ??= new float[BlockSize])[off] = Fp8E4M3.QuantizeRow(row, codes);
                break;
        }
    }

    // Rows [off, off + n) of `block` decoded to floats into dst.
    private void Get(Array?[] data, float[]?[] scales, int block, int off, int n, Span<float> dst)
    {
        int w = RowWidth;
        var stored = data[block] ?? throw new ArgumentException($"block {block} of the table was never written", "blockTable");
        switch (DType)
        {
            case KvCacheDType.Fp32:
                ((float[])stored).AsSpan(off * w, n * w).CopyTo(dst);
                break;
            case KvCacheDType.Bf16:
                var bits = ((ushort[])stored).AsSpan(off * w, n * w);
                for (int i = 0; i < bits.Length; i++)
                {
                    dst[i] = DTypeInfo.Bf16ToFloat(bits[i]);
                }
                break;
            default:
                var codes = ((byte[])stored).AsSpan(off * w, n * w);
                var s = scales[block]!;
                for (int r = 0; r < n; r++)
                {
                    float scale = s[off + r];
                    for (int i = 0; i < w; i++)
                    {
                        dst[(r * w) + i] = Fp8E4M3.ToFloat(codes[(r * w) + i]) * scale;
                    }
                }
                break;
        }
    }

    /// <inheritdoc />
    public void CopyBlock(int source, int destination)
    {
        KvBlockStores.ValidateCopy(this, source, destination);
        CopyBlock(_k, _kScales, source, destination);
        CopyBlock(_v, _vScales, source, destination);
    }

    // One side (K or V) of a block: the element array in the store's dtype and, for FP8, the row scales.
    private static void CopyBlock(Array?[] data, float[]?[] scales, int source, int destination)
    {
        if (data[source] is not { } src)
        {
            data[destination] = null;
            scales[destination] = null;
            return;
        }
        src.CopyTo(data[destination] ??= Array.CreateInstance(src.GetType().GetElementType()!, src.Length), 0);
        if (scales[source] is { } s)
        {
            s.CopyTo(scales[destination] ??= new float[s.Length], 0);
        }
    }

    /// <inheritdoc />
    public void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable, int firstSlot, int keys,
        int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        KvBlockStores.ValidateAttention(this, q, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output);
        AttentionCore(q, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output);
    }

    private void AttentionCore(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable, int firstSlot, int keys,
        int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        int w = RowWidth;
        int need = keys * w;
        if (_scratchK.Length < need)
        {
            int cap = Math.Max(need, _scratchK.Length * 2);
            _scratchK = new float[cap];
            _scratchV = new float[cap];
        }
        for (int j = 0; j < keys;)
        {
            int s = firstSlot + j;
            int block = blockTable[s / BlockSize], off = s % BlockSize;
            int n = Math.Min(BlockSize - off, keys - j);
            Get(_k, _kScales, block, off, n, _scratchK.AsSpan(j * w, n * w));
            Get(_v, _vScales, block, off, n, _scratchV.AsSpan(j * w, n * w));
            j += n;
        }
        _backend.Attention(q, rows, queryPositions, _scratchK.AsSpan(0, need), _scratchV.AsSpan(0, need), keys, keyPositionStart, p, output);
    }

    /// <inheritdoc />
    public void AttentionBatch(ReadOnlySpan<float> q, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences, in AttentionParams p,
        Span<float> output)
    {
        KvBlockStores.ValidateAttentionBatch(this, q, queryPositions, sequences, p, output);
        int width = p.Heads * p.HeadDim, r = 0;
        foreach (var s in sequences)
        {
            AttentionCore(q.Slice(r * width, s.Rows * width), s.Rows, queryPositions.Slice(r, s.Rows), s.BlockTable.Span, s.FirstSlot, s.Keys,
                s.KeyPositionStart, p, output.Slice(r * width, s.Rows * width));
            r += s.Rows;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
