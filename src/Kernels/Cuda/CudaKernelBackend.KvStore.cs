using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>The paged KV cache in device memory (<see cref="IKvBlockStoreFactory"/>).</summary>
public sealed unsafe partial class CudaKernelBackend : IKvBlockStoreFactory
{
    /// <inheritdoc />
    public IKvBlockStore CreateKvBlockStore(int blocks, int blockSize, int rowWidth)
    {
        Require(blocks > 0 && blockSize > 0 && rowWidth > 0, $"blocks, blockSize and rowWidth must be positive, got {blocks}, {blockSize}, {rowWidth}", nameof(blocks));
        Require((long)blocks * blockSize <= int.MaxValue, $"blocks × blockSize = {(long)blocks * blockSize} rows exceeds {int.MaxValue}", nameof(blocks));
        ObjectDisposedException.ThrowIf(_disposed, this);
        _context.SetCurrent();
        long bytes = checked((long)blocks * blockSize * rowWidth * sizeof(float));
        DeviceBuffer k = DeviceBuffer.Allocate(_context.DangerousGetHandle(), bytes);
        try
        {
            DeviceBuffer v = DeviceBuffer.Allocate(_context.DangerousGetHandle(), bytes);
            return new CudaKvBlockStore(this, k, v, blocks, blockSize, rowWidth);
        }
        catch
        {
            k.Dispose();
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
        CudaCallContext ctx = Rent();
        bool ok = false;
        try
        {
            ulong dk = Upload(ctx, k);
            ulong dv = Upload(ctx, v);
            ulong ds = Upload(ctx, slots);
            _module.KvScatter(ctx.Stream.Value, dk, dv, ds, store.K.Pointer, store.V.Pointer, slots.Length, store.RowWidth);
            // The pinned staging of this call is reused by the next one: the copies must have left it.
            ctx.Stream.Synchronize();
            ok = true;
        }
        finally
        {
            Return(ctx, ok);
        }
    }

    internal void KvAttention(CudaKvBlockStore store, ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable,
        int firstSlot, int keys, int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        KvBlockStores.ValidateAttention(store, q, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output);
        if (rows == 0)
        {
            return;
        }
        long qElements = (long)rows * p.Heads * p.HeadDim;
        CudaCallContext ctx = Rent();
        bool ok = false;
        try
        {
            ulong dq = Upload(ctx, q);
            ulong dp = Upload(ctx, queryPositions);
            ulong dt = Upload(ctx, blockTable);
            ulong dout = ctx.Device.Alloc(qElements * 4);
            LaunchAttention(ctx, dq, dp, store.K.Pointer, store.V.Pointer, dt, firstSlot, store.BlockSize, dout, rows, keys, keyPositionStart, p);
            Download(ctx, dout, output);
            ok = true;
        }
        finally
        {
            Return(ctx, ok);
        }
    }
}

/// <summary>
/// KV blocks in device memory: K and V each <c>[blocks · blockSize, rowWidth]</c> fp32, allocated up front (the KV budget
/// is the allocation). A write uploads only the new rows and scatters them; attention uploads queries, positions and the
/// block table and reads the keys in place.
/// </summary>
internal sealed class CudaKvBlockStore : IKvBlockStore
{
    private readonly CudaKernelBackend _owner;

    internal CudaKvBlockStore(CudaKernelBackend owner, DeviceBuffer k, DeviceBuffer v, int blocks, int blockSize, int rowWidth)
    {
        _owner = owner;
        K = k;
        V = v;
        Blocks = blocks;
        BlockSize = blockSize;
        RowWidth = rowWidth;
    }

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

    public void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<int> blockTable, int firstSlot, int keys,
        int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        ObjectDisposedException.ThrowIf(K.IsClosed, this);
        _owner.KvAttention(this, q, rows, queryPositions, blockTable, firstSlot, keys, keyPositionStart, p, output);
    }

    public void Dispose()
    {
        K.Dispose();
        V.Dispose();
    }
}
