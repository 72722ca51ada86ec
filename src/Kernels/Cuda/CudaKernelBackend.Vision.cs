namespace Distributed.Kernels.Cuda;

/// <summary>The ops the Llama 4 vision encoder adds: LayerNorm, exact GELU, bias rows, 2-D RoPE, bidirectional attention.</summary>
public sealed unsafe partial class CudaKernelBackend
{
    /// <inheritdoc />
    public void LayerNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y)
    {
        Require(rows >= 0 && cols > 0, $"rows must be ≥ 0 and cols > 0, got {rows}×{cols}", nameof(rows));
        Require(x.Length == (long)rows * cols, $"x has {x.Length} elements, expected {rows}×{cols}", nameof(x));
        Require(y.Length == x.Length, $"y has {y.Length} elements, expected {x.Length}", nameof(y));
        Require(weight.Length == cols, $"weight has {weight.Length} elements, expected {cols}", nameof(weight));
        Require(bias.Length == cols, $"bias has {bias.Length} elements, expected {cols}", nameof(bias));
        Require(eps >= 0f && float.IsFinite(eps), $"eps must be finite and non-negative, got {eps}", nameof(eps));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        ulong dw = Upload(ctx, weight);
        ulong db = Upload(ctx, bias);
        _module.LayerNorm(ctx.Stream.Value, dx, dw, db, dx, rows, cols, eps);
        Download(ctx, dx, y);
        call.Complete();
    }

    /// <inheritdoc />
    public void Gelu(ReadOnlySpan<float> x, Span<float> dst)
    {
        Require(dst.Length == x.Length, $"x ({x.Length}) and dst ({dst.Length}) must have the same length", nameof(dst));
        if (x.Length == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        _module.Gelu(ctx.Stream.Value, dx, dx, x.Length);
        Download(ctx, dx, dst);
        call.Complete();
    }

    /// <inheritdoc />
    public void AddBias(Span<float> x, int rows, ReadOnlySpan<float> bias)
    {
        Require(rows >= 0 && bias.Length > 0, $"rows must be ≥ 0 and bias non-empty, got {rows}, {bias.Length}", nameof(rows));
        Require(x.Length == (long)rows * bias.Length, $"x has {x.Length} elements, expected rows×bias = {rows}×{bias.Length}", nameof(x));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload<float>(ctx, x);
        ulong db = Upload(ctx, bias);
        _module.AddBias(ctx.Stream.Value, dx, db, rows, bias.Length);
        Download(ctx, dx, x);
        call.Complete();
    }

    /// <inheritdoc />
    public void RotatePairs(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<float> cosSin)
    {
        Require(rows >= 0 && heads > 0, $"rows must be ≥ 0 and heads > 0, got {rows}, {heads}", nameof(rows));
        Require(headDim >= 2 && headDim % 2 == 0, $"headDim must be even and ≥ 2, got {headDim}", nameof(headDim));
        Require(x.Length == (long)rows * heads * headDim, $"x has {x.Length} elements, expected rows×heads×headDim = {rows}×{heads}×{headDim}", nameof(x));
        Require(cosSin.Length == (long)rows * headDim, $"cosSin has {cosSin.Length} elements, expected rows×(headDim/2)×2 = {(long)rows * headDim}", nameof(cosSin));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload<float>(ctx, x);
        ulong dc = Upload(ctx, cosSin);
        _module.RotatePairs(ctx.Stream.Value, dx, dc, rows, heads, headDim / 2);
        Download(ctx, dx, x);
        call.Complete();
    }

    /// <inheritdoc />
    /// <remarks>
    /// Uploads q, k and v once and runs the attention kernels block by block with every query at the block's last
    /// position, so the causal mask hides nothing: the same kernels (and per-row reduction order) as
    /// <see cref="Attention"/>, without a mask.
    /// </remarks>
    public void BidirectionalAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int sequences, int tokens, int heads,
        int headDim, float scale, Span<float> output)
    {
        var p = new AttentionParams(heads, heads, headDim, scale, 0);
        p.Validate();
        Require(sequences >= 0 && tokens > 0, $"sequences must be ≥ 0 and tokens > 0, got {sequences}, {tokens}", nameof(sequences));
        long size = (long)sequences * tokens * heads * headDim;
        Require(q.Length == size, $"q has {q.Length} elements, expected sequences×tokens×heads×headDim = {size}", nameof(q));
        Require(k.Length == size, $"k has {k.Length} elements, expected {size}", nameof(k));
        Require(v.Length == size, $"v has {v.Length} elements, expected {size}", nameof(v));
        Require(output.Length == size, $"output has {output.Length} elements, expected {size}", nameof(output));
        if (sequences == 0)
        {
            return;
        }
        var positions = new int[tokens];
        Array.Fill(positions, tokens - 1);
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dq = Upload(ctx, q);
        ulong dk = Upload(ctx, k);
        ulong dv = Upload(ctx, v);
        ulong dp = Upload<int>(ctx, positions);
        ulong dout = ctx.Device.Alloc(size * 4);
        ulong blockBytes = (ulong)tokens * (ulong)heads * (ulong)headDim * 4;
        for (int s = 0; s < sequences; s++)
        {
            ulong offset = (ulong)s * blockBytes;
            LaunchAttention(ctx, dq + offset, dp, dk + offset, dv + offset, dout + offset, tokens, tokens, 0, p);
        }
        Download(ctx, dout, output);
        call.Complete();
    }
}
