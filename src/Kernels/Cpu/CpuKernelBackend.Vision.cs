using System.Buffers;

namespace Distributed.Kernels.Cpu;

/// <summary>The ops the Llama 4 vision encoder adds: LayerNorm, exact GELU, bias rows, 2-D RoPE, bidirectional attention.</summary>
public sealed unsafe partial class CpuKernelBackend
{
    /// <inheritdoc />
    public void LayerNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y)
    {
        ThrowIfDisposed();
        const string Op = nameof(LayerNorm);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(cols, 1, Op, nameof(cols));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * cols, Op, nameof(x), "[rows, cols]");
        KernelThrowHelper.CheckLength(y.Length, (long)rows * cols, Op, nameof(y), "[rows, cols]");
        KernelThrowHelper.CheckLength(weight.Length, cols, Op, nameof(weight), "[cols]");
        KernelThrowHelper.CheckLength(bias.Length, cols, Op, nameof(bias), "[cols]");
        if (!(eps >= 0f) || float.IsInfinity(eps))
        {
            KernelThrowHelper.ThrowArgument(Op, nameof(eps), $"eps must be finite and non-negative, got {eps}");
        }
        fixed (float* px = x, pw = weight, pb = bias, py = y)
        {
            RunRows(RowOp.LayerNorm, rows, cols, px, py, pw, eps, null, 0, null, pb);
        }
    }

    /// <inheritdoc />
    public void Gelu(ReadOnlySpan<float> x, Span<float> dst)
    {
        ThrowIfDisposed();
        KernelThrowHelper.CheckLength(dst.Length, x.Length, nameof(Gelu), nameof(dst), "same length as x");
        fixed (float* px = x, pd = dst)
        {
            VectorOps.Gelu(_simd, px, pd, x.Length);
        }
    }

    /// <inheritdoc />
    public void AddBias(Span<float> x, int rows, ReadOnlySpan<float> bias)
    {
        ThrowIfDisposed();
        const string Op = nameof(AddBias);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(bias.Length, 1, Op, nameof(bias));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * bias.Length, Op, nameof(x), "[rows, bias.Length]");
        int cols = bias.Length;
        fixed (float* px = x, pb = bias)
        {
            for (int r = 0; r < rows; r++)
            {
                VectorOps.Add(_simd, px + ((long)r * cols), pb, cols);
            }
        }
    }

    /// <inheritdoc />
    public void RotatePairs(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<float> cosSin)
    {
        ThrowIfDisposed();
        const string Op = nameof(RotatePairs);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(heads, 1, Op, nameof(heads));
        KernelThrowHelper.CheckAtLeast(headDim, 2, Op, nameof(headDim));
        if (headDim % 2 != 0)
        {
            KernelThrowHelper.ThrowArgument(Op, nameof(headDim), $"headDim must be even (pairs rotate), got {headDim}");
        }
        KernelThrowHelper.CheckLength(x.Length, (long)rows * heads * headDim, Op, nameof(x), "[rows, heads, headDim]");
        KernelThrowHelper.CheckLength(cosSin.Length, (long)rows * headDim, Op, nameof(cosSin), "[rows, headDim / 2, 2]");
        fixed (float* px = x, pc = cosSin)
        {
            RunRows(RowOp.RotatePairs, rows, heads * headDim, px, px, pc, 0f, null, heads, null);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Runs <see cref="Attention"/> on each block with every query placed at the block's last position: the causal mask
    /// then hides nothing, so this is the same kernel (and the same per-row reduction order) without a mask.
    /// </remarks>
    public void BidirectionalAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int sequences, int tokens, int heads,
        int headDim, float scale, Span<float> output)
    {
        ThrowIfDisposed();
        const string Op = nameof(BidirectionalAttention);
        KernelThrowHelper.CheckAtLeast(sequences, 0, Op, nameof(sequences));
        KernelThrowHelper.CheckAtLeast(tokens, 1, Op, nameof(tokens));
        var p = new AttentionParams(heads, heads, headDim, scale, 0);
        p.Validate();
        long size = (long)sequences * tokens * heads * headDim;
        KernelThrowHelper.CheckLength(q.Length, size, Op, nameof(q), "[sequences · tokens, heads, headDim]");
        KernelThrowHelper.CheckLength(k.Length, size, Op, nameof(k), "[sequences · tokens, heads, headDim]");
        KernelThrowHelper.CheckLength(v.Length, size, Op, nameof(v), "[sequences · tokens, heads, headDim]");
        KernelThrowHelper.CheckLength(output.Length, size, Op, nameof(output), "[sequences · tokens, heads, headDim]");
        int block = tokens * heads * headDim;
        int[] positions = ArrayPool<int>.Shared.Rent(tokens);
        try
        {
            positions.AsSpan(0, tokens).Fill(tokens - 1);
            for (int s = 0; s < sequences; s++)
            {
                Attention(q.Slice(s * block, block), tokens, positions.AsSpan(0, tokens), k.Slice(s * block, block), v.Slice(s * block, block),
                    tokens, 0, p, output.Slice(s * block, block));
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(positions);
        }
    }
}
