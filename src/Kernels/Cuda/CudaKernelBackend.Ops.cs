namespace Distributed.Kernels.Cuda;

/// <summary>The NVRTC-kernel ops: norms, elementwise, RoPE, attention, softmax, top-k, argmax.</summary>
public sealed unsafe partial class CudaKernelBackend
{
    /// <inheritdoc />
    public void RmsNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(x.Length == (long)rows * cols, $"x has {x.Length} elements, expected {rows}×{cols}", nameof(x));
        Require(y.Length == x.Length, $"y has {y.Length} elements, expected {x.Length}", nameof(y));
        Require(weight.Length == 0 || weight.Length == cols, $"weight has {weight.Length} elements, expected {cols} or 0", nameof(weight));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        ulong dw = weight.Length == 0 ? 0 : Upload(ctx, weight);
        _module.RmsNorm(ctx.Stream.Value, dx, dw, dx, rows, cols, eps, weight.Length != 0);
        Download(ctx, dx, y);
        call.Complete();
    }

    /// <inheritdoc />
    public void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        Require(up.Length == gate.Length && dst.Length == gate.Length,
            $"gate ({gate.Length}), up ({up.Length}) and dst ({dst.Length}) must have the same length", nameof(gate));
        if (gate.Length == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong g = Upload(ctx, gate);
        ulong u = Upload(ctx, up);
        _module.SiluMul(ctx.Stream.Value, g, u, g, gate.Length);
        Download(ctx, g, dst);
        call.Complete();
    }

    /// <inheritdoc />
    public void Rope(Span<float> x, int rows, int heads, ReadOnlySpan<int> positions, RopeTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        Require(rows >= 0 && heads > 0, $"rows must be ≥ 0 and heads > 0, got {rows}, {heads}", nameof(rows));
        Require(x.Length == (long)rows * heads * table.HeadDim,
            $"x has {x.Length} elements, expected rows×heads×headDim = {rows}×{heads}×{table.HeadDim}", nameof(x));
        Require(positions.Length == rows, $"positions has {positions.Length} entries, expected {rows}", nameof(positions));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload<float>(ctx, x);
        ulong dp = Upload(ctx, positions);
        ulong df = Upload<float>(ctx, table.InvFreq);
        _module.Rope(ctx.Stream.Value, dx, dp, df, rows, heads, table.InvFreq.Length);
        Download(ctx, dx, x);
        call.Complete();
    }

    /// <inheritdoc />
    /// <remarks>One thread block per (query row, head); scores and probabilities go through device scratch, so any key
    /// count works (query rows are processed in slices bounded by <see cref="CudaBackendOptions.AttentionScratchBytes"/>).</remarks>
    public void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<float> k,
        ReadOnlySpan<float> v, int keys, int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        p.Validate();
        Require(rows >= 0 && keys >= 0, $"rows and keys must be ≥ 0, got {rows}, {keys}", nameof(rows));
        long qElements = (long)rows * p.Heads * p.HeadDim;
        long kvElements = (long)keys * p.KvHeads * p.HeadDim;
        Require(q.Length == qElements, $"q has {q.Length} elements, expected rows×heads×headDim = {qElements}", nameof(q));
        Require(output.Length == qElements, $"output has {output.Length} elements, expected {qElements}", nameof(output));
        Require(queryPositions.Length == rows, $"queryPositions has {queryPositions.Length} entries, expected {rows}", nameof(queryPositions));
        Require(k.Length == kvElements, $"k has {k.Length} elements, expected keys×kvHeads×headDim = {kvElements}", nameof(k));
        Require(v.Length == kvElements, $"v has {v.Length} elements, expected {kvElements}", nameof(v));
        Require(keyPositionStart >= 0, $"keyPositionStart must be ≥ 0, got {keyPositionStart}", nameof(keyPositionStart));
        for (int i = 0; i < queryPositions.Length; i++)
        {
            Require(queryPositions[i] >= 0, $"queryPositions[{i}] = {queryPositions[i]} is negative", nameof(queryPositions));
        }
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dq = Upload(ctx, q);
        ulong dp = Upload(ctx, queryPositions);
        ulong dk = Upload(ctx, k);
        ulong dv = Upload(ctx, v);
        ulong dout = ctx.Device.Alloc(qElements * 4);
        LaunchAttention(ctx, dq, dp, dk, dv, dout, rows, keys, keyPositionStart, p);
        Download(ctx, dout, output);
        call.Complete();
    }

    /// <summary>
    /// Queues attention over contiguous keys for all rows: keys beyond one split (<see cref="CudaKernelModule.SplitKeys"/>)
    /// go through the split-key kernels (one block per row, head and split, then a merge), so a decode over a long context
    /// keeps the device busy; shorter ranges use one block per (row, head). Rows are processed in slices that fit
    /// <see cref="CudaBackendOptions.AttentionScratchBytes"/>.
    /// </summary>
    private void LaunchAttention(CudaCallContext ctx, ulong dq, ulong dp, ulong dk, ulong dv, ulong dout, int rows, int keys, int keyPositionStart,
        in AttentionParams p)
    {
        bool split = keys > CudaKernelModule.SplitKeys;
        long splits = (keys + CudaKernelModule.SplitKeys - 1) / CudaKernelModule.SplitKeys;
        long perRow = split ? (long)p.Heads * splits * (p.HeadDim + 2) * 4 : Math.Max(1L, (long)p.Heads * keys * 4);
        int slice = (int)Math.Clamp(Options.AttentionScratchBytes / perRow, 1, rows);
        ulong scratch = ctx.Device.Alloc(slice * perRow);
        for (int rowBase = 0; rowBase < rows; rowBase += slice)
        {
            int n = Math.Min(slice, rows - rowBase);
            if (split)
            {
                _module.AttentionSplit(ctx.Stream.Value, dq, dp, dk, dv, table: 0, firstSlot: 0, blockSize: 1, meta: 0, scratch, dout, n, rowBase, keys,
                    keyPositionStart, p);
            }
            else
            {
                _module.Attention(ctx.Stream.Value, dq, dp, dk, dv, dout, scratch, n, rowBase, keys, keyPositionStart, p);
            }
        }
    }

    /// <inheritdoc />
    public void SoftmaxStable(Span<float> x, int rows, int cols)
    {
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(x.Length == (long)rows * cols, $"x has {x.Length} elements, expected {rows}×{cols}", nameof(x));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload<float>(ctx, x);
        _module.SoftmaxRows(ctx.Stream.Value, dx, rows, cols);
        Download(ctx, dx, x);
        call.Complete();
    }

    /// <inheritdoc />
    public void TopK(ReadOnlySpan<float> scores, int rows, int cols, int k, Span<int> ids, Span<float> values)
    {
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(k >= 1 && k <= cols, $"k must be in [1, cols = {cols}], got {k}", nameof(k));
        Require(scores.Length == (long)rows * cols, $"scores has {scores.Length} elements, expected {rows}×{cols}", nameof(scores));
        Require(ids.Length == (long)rows * k, $"ids has {ids.Length} entries, expected {rows}×{k}", nameof(ids));
        Require(values.Length == (long)rows * k, $"values has {values.Length} entries, expected {rows}×{k}", nameof(values));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong ds = Upload(ctx, scores);
        ulong di = ctx.Device.Alloc(ids.Length * 4L);
        ulong dv = ctx.Device.Alloc(values.Length * 4L);
        _module.TopKRows(ctx.Stream.Value, ds, di, dv, rows, cols, k);
        nint hi = EnqueueDownload(ctx, di, ids.Length * 4L);
        nint hv = EnqueueDownload(ctx, dv, values.Length * 4L);
        ctx.Stream.Synchronize();
        new ReadOnlySpan<int>((void*)hi, ids.Length).CopyTo(ids);
        new ReadOnlySpan<float>((void*)hv, values.Length).CopyTo(values);
        call.Complete();
    }

    /// <inheritdoc />
    public void Argmax(ReadOnlySpan<float> x, int rows, int cols, Span<int> ids)
    {
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(x.Length == (long)rows * cols, $"x has {x.Length} elements, expected {rows}×{cols}", nameof(x));
        Require(ids.Length == rows, $"ids has {ids.Length} entries, expected {rows}", nameof(ids));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        ulong di = ctx.Device.Alloc(rows * 4L);
        _module.ArgmaxRows(ctx.Stream.Value, dx, di, rows, cols);
        Download(ctx, di, ids);
        call.Complete();
    }

    /// <inheritdoc />
    public void Add(Span<float> dst, ReadOnlySpan<float> src)
    {
        Require(src.Length == dst.Length, $"dst ({dst.Length}) and src ({src.Length}) must have the same length", nameof(src));
        if (dst.Length == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dd = Upload<float>(ctx, dst);
        ulong ds = Upload(ctx, src);
        _module.AddInPlace(ctx.Stream.Value, dd, ds, dst.Length);
        Download(ctx, dd, dst);
        call.Complete();
    }
}
