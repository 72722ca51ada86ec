using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>The paged KV cache in device memory (<see cref="IKvBlockStoreFactory"/>).</summary>
public sealed unsafe partial class CudaKernelBackend : IKvBlockStoreFactory
{
    /// <inheritdoc />
    public IKvBlockStore CreateKvBlockStore(int blocks, int blockSize, int rowWidth, KvCacheDType dtype = KvCacheDType.Fp32)
    {
        Require(blocks > 0 && blockSize > 0 && rowWidth > 0, $"blocks, blockSize and rowWidth must be positive, got {blocks}, {blockSize}, {rowWidth}", nameof(blocks));
        Require((long)blocks * blockSize <= int.MaxValue, $"blocks × blockSize = {(long)blocks * blockSize} rows exceeds {int.MaxValue}", nameof(blocks));
        Require(Enum.IsDefined(dtype), $"unknown KV cache dtype {(int)dtype}", nameof(dtype));
        ObjectDisposedException.ThrowIf(_disposed, this);
        _context.SetCurrent();
        long rows = (long)blocks * blockSize;
        int element = dtype switch
        {
            KvCacheDType.Fp32 => sizeof(float),
            KvCacheDType.Bf16 => sizeof(ushort),
            _ => sizeof(byte),
        };
        long bytes = checked(rows * rowWidth * element);
        var buffers = new List<DeviceBuffer>(4);
        try
        {
            nint context = _context.DangerousGetHandle();
            buffers.Add(DeviceBuffer.Allocate(context, bytes));
            buffers.Add(DeviceBuffer.Allocate(context, bytes));
            if (dtype == KvCacheDType.Fp8E4M3)
            {
                buffers.Add(DeviceBuffer.Allocate(context, rows * sizeof(float)));
                buffers.Add(DeviceBuffer.Allocate(context, rows * sizeof(float)));
            }
            return new CudaKvBlockStore(this, buffers[0], buffers[1], buffers.Count > 2 ? buffers[2] : null, buffers.Count > 2 ? buffers[3] : null,
                blocks, blockSize, rowWidth, dtype);
        }
        catch
        {
            foreach (var b in buffers)
            {
                b.Dispose();
            }
            throw;
        }
    }

    internal void KvWrite(CudaKvBlockStore store, ReadOnlySpan<int> slots, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        KvBlockStores.ValidateWrite(store, slots, k, v);
        if (slots.Length == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dk = Upload(ctx, k);
        ulong dv = Upload(ctx, v);
        KvScatterOnDevice(ctx, store, slots, dk, dv);
        // The pinned staging of this call is reused by the next one: the copies must have left it.
        ctx.Stream.Synchronize();
        call.Complete();
    }

    /// <summary>Queues the scatter of device rows k, v [slots, RowWidth] into the store's <paramref name="slots"/> (validated by the caller).</summary>
    internal void KvScatterOnDevice(CudaCallContext ctx, CudaKvBlockStore store, ReadOnlySpan<int> slots, ulong dk, ulong dv)
    {
        ulong ds = Upload(ctx, slots);
        _module.KvScatter(ctx.Stream.Value, store.DType, dk, dv, ds, store.K.Pointer, store.V.Pointer, store.KScalePointer, store.VScalePointer,
            slots.Length, store.RowWidth);
    }

    internal void KvCopyBlock(CudaKvBlockStore store, int source, int destination)
    {
        KvBlockStores.ValidateCopy(store, source, destination);
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        // Bytes per block from each allocation, so the copy follows whatever element format the store keeps (and the
        // FP8 row scales, kept apart from the codes).
        foreach (DeviceBuffer? buffer in new[] { store.K, store.V, store.KScale, store.VScale })
        {
            if (buffer is null)
            {
                continue;
            }
            ulong blockBytes = (ulong)(buffer.Bytes / store.Blocks);
            CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(buffer.Pointer + (ulong)destination * blockBytes, buffer.Pointer + (ulong)source * blockBytes,
                (nuint)blockBytes, ctx.Stream.Value), "cuMemcpyDtoDAsync_v2");
        }
        ctx.Stream.Synchronize();
        call.Complete();
    }

    internal void KvAttentionBatch(CudaKvBlockStore store, ReadOnlySpan<float> q, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences,
        in AttentionParams p, Span<float> output, bool validated = false)
    {
        if (!validated)
        {
            KvBlockStores.ValidateAttentionBatch(store, q, queryPositions, sequences, p, output);
        }
        int rows = queryPositions.Length;
        if (rows == 0)
        {
            return;
        }
        long qElements = (long)rows * p.Heads * p.HeadDim;
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dq = Upload(ctx, q);
        ulong dp = Upload(ctx, queryPositions);
        ulong dout = ctx.Device.Alloc(qElements * 4);
        KvAttentionOnDevice(ctx, store, dq, dp, rows, sequences, p, dout);
        Download(ctx, dout, output);
        call.Complete();
    }

    /// <summary>
    /// Queues the batched paged attention for device queries <paramref name="dq"/> [rows, heads·headDim] at device positions
    /// <paramref name="dp"/> into device <paramref name="dout"/> (shapes validated by the caller).
    /// </summary>
    internal void KvAttentionOnDevice(CudaCallContext ctx, CudaKvBlockStore store, ulong dq, ulong dp, int rows, ReadOnlySpan<KvSequenceView> sequences,
        in AttentionParams p, ulong dout)
    {
        int tableLength = 0;
        foreach (var s in sequences)
        {
            tableLength += s.BlockTable.Length;
        }
        int[] meta = System.Buffers.ArrayPool<int>.Shared.Rent(4 * rows);
        int[] tables = System.Buffers.ArrayPool<int>.Shared.Rent(Math.Max(1, tableLength));
        int maxKeys = PackAttention(sequences, meta.AsSpan(0, 4 * rows), tables);
        // Upload copies into pinned staging at once, so the pooled arrays go back right away.
        ulong dt = Upload<int>(ctx, tables.AsSpan(0, Math.Max(1, tableLength)));
        ulong dm = Upload<int>(ctx, meta.AsSpan(0, 4 * rows));
        System.Buffers.ArrayPool<int>.Shared.Return(tables);
        System.Buffers.ArrayPool<int>.Shared.Return(meta);
        KvAttentionPacked(ctx, store, dq, dp, rows, dt, dm, (maxKeys + CudaKernelModule.SplitKeys - 1) / CudaKernelModule.SplitKeys, p, dout);
    }

    /// <summary>
    /// Packs the per-row sequence data of a batched attention: <paramref name="meta"/>[4 r ..] = (keys, key start, first
    /// slot, offset of the row's block table in <paramref name="tables"/>) for the rows of <paramref name="sequences"/>
    /// in order, the block tables concatenated into <paramref name="tables"/>. Meta entries past the sequences' rows (the
    /// padded rows of a graph bucket) get 0 keys: those rows see no key and their output is 0. Returns the largest key count (≥ 1).
    /// </summary>
    internal static int PackAttention(ReadOnlySpan<KvSequenceView> sequences, Span<int> meta, Span<int> tables)
    {
        int r = 0, offset = 0, maxKeys = 1;
        foreach (var s in sequences)
        {
            s.BlockTable.Span.CopyTo(tables[offset..]);
            for (int i = 0; i < s.Rows; i++, r++)
            {
                meta[4 * r] = s.Keys;
                meta[4 * r + 1] = s.KeyPositionStart;
                meta[4 * r + 2] = s.FirstSlot;
                meta[4 * r + 3] = offset;
            }
            offset += s.BlockTable.Length;
            maxKeys = Math.Max(maxKeys, s.Keys);
        }
        meta[(4 * r)..].Clear();
        return maxKeys;
    }

    /// <summary>
    /// Queues the split-key attention over device tables <paramref name="dt"/> and per-row meta <paramref name="dm"/>
    /// (<see cref="PackAttention"/>) with <paramref name="splits"/> key splits: any count that covers the longest row's
    /// keys gives bitwise the same output (a split past a row's keys is empty and the merge skips it), so a graph can be
    /// captured for a split count and replayed while the keys grow up to it.
    /// </summary>
    internal void KvAttentionPacked(CudaCallContext ctx, CudaKvBlockStore store, ulong dq, ulong dp, int rows, ulong dt, ulong dm, int splits,
        in AttentionParams p, ulong dout)
    {
        // Always the split kernels: one launch for every sequence, each row over its own keys (empty splits merge as nothing).
        long perRow = (long)p.Heads * splits * (p.HeadDim + 2) * 4;
        int slice = (int)Math.Clamp(Options.AttentionScratchBytes / perRow, 1, rows);
        ulong scratch = ctx.Device.Alloc(slice * perRow);
        int keys = splits * CudaKernelModule.SplitKeys;
        for (int rowBase = 0; rowBase < rows; rowBase += slice)
        {
            int n = Math.Min(slice, rows - rowBase);
            _module.AttentionSplit(ctx.Stream.Value, store.DType, dq, dp, store.K.Pointer, store.V.Pointer, store.KScalePointer, store.VScalePointer, dt, 0,
                store.BlockSize, dm, scratch, dout, n, rowBase, keys, 0, p);
        }
    }
}

/// <summary>
/// KV blocks in device memory: K and V each <c>[blocks · blockSize, rowWidth]</c> in <see cref="DType"/> (fp32, bf16, or
/// FP8 codes plus a <c>[blocks · blockSize]</c> fp32 scale array each), allocated up front (the KV budget is the allocation). A write uploads only the new rows and scatters them; attention uploads queries, positions, the
/// block tables and per-row sequence data, reads the keys in place, and always runs the split-key kernels, so a row's
/// result does not depend on whether its sequence ran alone or in a batch.
/// </summary>
internal sealed class CudaKvBlockStore : IKvBlockStore
{
    private readonly CudaKernelBackend _owner;

    internal CudaKvBlockStore(CudaKernelBackend owner, DeviceBuffer k, DeviceBuffer v, DeviceBuffer? kScale, DeviceBuffer? vScale, int blocks,
        int blockSize, int rowWidth, KvCacheDType dtype)
    {
        _owner = owner;
        K = k;
        V = v;
        KScale = kScale;
        VScale = vScale;
        Blocks = blocks;
        BlockSize = blockSize;
        RowWidth = rowWidth;
        DType = dtype;
    }

    public KvCacheDType DType { get; }

    internal CudaKernelBackend Owner => _owner;

    internal DeviceBuffer? KScale { get; }

    internal DeviceBuffer? VScale { get; }

    internal ulong KScalePointer => KScale?.Pointer ?? 0;

    internal ulong VScalePointer => VScale?.Pointer ?? 0;

    public int Blocks { get; }

    public int BlockSize { get; }

    public int RowWidth { get; }

    public string Location => _owner.Name;

    internal DeviceBuffer K { get; }

    internal DeviceBuffer V { get; }

    public void Write(ReadOnlySpan<int> slots, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        ObjectDisposedException.ThrowIf(K.IsClosed, this);
        _owner.KvWrite(this, slots, k, v);
    }

    public void CopyBlock(int source, int destination)
    {
        ObjectDisposedException.ThrowIf(K.IsClosed, this);
        _owner.KvCopyBlock(this, source, destination);
    }

    public void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable, int firstSlot, int keys,
        int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        ObjectDisposedException.ThrowIf(K.IsClosed, this);
        KvBlockStores.ValidateAttention(this, q, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output);
        // One sequence through the batched path: the same kernels (and rounding) whether a sequence runs alone or not.
        _owner.KvAttentionBatch(this, q, queryPositions, [new KvSequenceView(rows, blockTable.ToArray(), firstSlot, keys, keyPositionStart)], p, output,
            validated: true);
    }

    public void AttentionBatch(ReadOnlySpan<float> q, ReadOnlySpan<int> queryPositions, ReadOnlySpan<KvSequenceView> sequences, in AttentionParams p,
        Span<float> output)
    {
        ObjectDisposedException.ThrowIf(K.IsClosed, this);
        _owner.KvAttentionBatch(this, q, queryPositions, sequences, p, output);
    }

    public void Dispose()
    {
        K.Dispose();
        V.Dispose();
        KScale?.Dispose();
        VScale?.Dispose();
    }
}
