using System.Buffers;

namespace Distributed.Kernels.Cpu;

public sealed unsafe partial class CpuKernelBackend
{
    /// <summary>Below this many multiply-adds a matmul runs on the calling thread.</summary>
    private const long ParallelMacThreshold = 1 << 18;

    /// <summary>
    /// Rows of an FFN processed together; bounds the scratch to <c>3 · FfnRowBlock · I</c> floats (24 MiB at I = 8192)
    /// while keeping each weight panel hot in L2 across 32 row blocks of the 8-row microkernel.
    /// </summary>
    private const int FfnRowBlock = 256;

    /// <inheritdoc />
    /// <exception cref="ArgumentException">Non-positive sizes, an undefined layout, or a length other than in × out.</exception>
    public IWeightMatrix CreateWeight(ReadOnlySpan<ushort> bf16, int inFeatures, int outFeatures, WeightLayout layout)
    {
        ThrowIfDisposed();
        const string Op = nameof(CreateWeight);
        KernelThrowHelper.CheckAtLeast(inFeatures, 1, Op, nameof(inFeatures));
        KernelThrowHelper.CheckAtLeast(outFeatures, 1, Op, nameof(outFeatures));
        if (layout is not (WeightLayout.OutIn or WeightLayout.InOut))
        {
            KernelThrowHelper.ThrowArgument(Op, nameof(layout), $"unknown weight layout {layout}");
        }
        KernelThrowHelper.CheckLength(bf16.Length, (long)inFeatures * outFeatures, Op, nameof(bf16),
            layout == WeightLayout.OutIn ? "[outFeatures, inFeatures]" : "[inFeatures, outFeatures]");
        var w = new PackedWeight(inFeatures, outFeatures, WeightPanelLayout);
        try
        {
            fixed (ushort* src = bf16)
            {
                Pack(w, src, layout);
            }
            return w;
        }
        catch
        {
            w.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Packed in the byte order of this backend's vector width (<see cref="PanelLayout.Fp8Wide"/> on AVX-512BW, else
    /// <see cref="PanelLayout.Fp8Narrow"/>): one byte per weight, one flag byte per 32 weights, the scales as fp32.
    /// Weight-only: with <see cref="CpuMatMulPrecision.Bf16"/> the activations are rounded to bf16 before they multiply
    /// the decoded weights (fp32 FMA); W8A8 quantizes the fp32 activations per token whatever the precision.
    /// </remarks>
    public IWeightMatrix CreateFp8Weight(ReadOnlySpan<byte> e4m3, ReadOnlySpan<float> scales, int inFeatures, int outFeatures, WeightLayout layout,
        Fp8ActivationMode activations)
    {
        ThrowIfDisposed();
        Fp8E4M3.CheckWeight(e4m3, scales, inFeatures, outFeatures, layout, activations);
        var panelLayout = _simd == SimdLevel.Vector512 && Fp8Decode.WideSupported ? PanelLayout.Fp8Wide : PanelLayout.Fp8Narrow;
        var w = new PackedWeight(inFeatures, outFeatures, panelLayout, activations);
        try
        {
            w.SetScales(scales);
            fixed (byte* src = e4m3)
            {
                Pack(w, src, layout);
            }
            return w;
        }
        catch
        {
            w.Dispose();
            throw;
        }
    }

    // Packs every panel of w from src (bf16 bits or E4M3 codes), on the team when the matrix is large.
    private void Pack(PackedWeight w, void* src, WeightLayout layout)
    {
        if ((long)w.InFeatures * w.OutFeatures < ParallelMacThreshold || _team.Threads == 1)
        {
            w.PackPanels(src, layout, 0, w.Panels);
            return;
        }
        lock (_sync)
        {
            ThrowIfDisposed();
            _packTask.Set(w, src, layout);
            _team.Run(_packTask);
        }
    }

    /// <inheritdoc />
    public void MatMul(ReadOnlySpan<float> x, int rows, IWeightMatrix w, Span<float> y)
    {
        ThrowIfDisposed();
        const string Op = nameof(MatMul);
        var pw = AsPacked(w, Op, nameof(w));
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * pw.InFeatures, Op, nameof(x), $"[rows, {pw.InFeatures}]");
        KernelThrowHelper.CheckLength(y.Length, (long)rows * pw.OutFeatures, Op, nameof(y), $"[rows, {pw.OutFeatures}]");
        if (rows == 0)
        {
            return;
        }
        fixed (float* px = x, py = y)
        {
            if (IsSmall(rows, pw))
            {
                if (pw.Layout == PanelLayout.Bf16Pairs)
                {
                    ComputeSmallBf16(px, rows, pw, py);
                }
                else if (NeedsInputPass(pw))
                {
                    ComputeSmallFp8(px, rows, pw, py);
                }
                else
                {
                    MatMulKernels.Compute(_simd, px, pw.InFeatures, rows, pw, 0, pw.Panels, py, pw.OutFeatures);
                }
                return;
            }
            lock (_sync)
            {
                ThrowIfDisposed();
                RunMatMulLocked(px, pw.InFeatures, rows, pw, py, pw.OutFeatures);
            }
        }
    }

    /// <inheritdoc />
    public void SwiGluFfn(ReadOnlySpan<float> x, int rows, IWeightMatrix gateUp, IWeightMatrix down, Span<float> y)
    {
        ThrowIfDisposed();
        const string Op = nameof(SwiGluFfn);
        var (gu, dn) = CheckFfnWeights(gateUp, down, Op, -1);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * gu.InFeatures, Op, nameof(x), $"[rows, {gu.InFeatures}]");
        KernelThrowHelper.CheckLength(y.Length, (long)rows * gu.InFeatures, Op, nameof(y), $"[rows, {gu.InFeatures}]");
        if (rows == 0)
        {
            return;
        }
        fixed (float* px = x, py = y)
        {
            lock (_sync)
            {
                ThrowIfDisposed();
                RunFfnLocked(px, rows, gu, dn, py);
            }
        }
    }

    /// <inheritdoc />
    public void SwiGluFfnGrouped(ReadOnlySpan<float> x, ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp,
        IReadOnlyList<IWeightMatrix> down, Span<float> y)
    {
        ThrowIfDisposed();
        const string Op = nameof(SwiGluFfnGrouped);
        ArgumentNullException.ThrowIfNull(gateUp);
        ArgumentNullException.ThrowIfNull(down);
        int groups = rowCounts.Length;
        KernelThrowHelper.CheckLength(gateUp.Count, groups, Op, nameof(gateUp), "one per group (rowCounts.Length)");
        KernelThrowHelper.CheckLength(down.Count, groups, Op, nameof(down), "one per group (rowCounts.Length)");
        KernelThrowHelper.CheckLength(y.Length, x.Length, Op, nameof(y), "same shape as x");
        int hidden = -1;
        long totalRows = 0;
        for (int g = 0; g < groups; g++)
        {
            if (rowCounts[g] < 0)
            {
                KernelThrowHelper.ThrowArgument(Op, nameof(rowCounts), $"rowCounts[{g}] = {rowCounts[g]} is negative");
            }
            var (gu, _) = CheckFfnWeights(gateUp[g], down[g], Op, g);
            if (hidden >= 0 && gu.InFeatures != hidden)
            {
                KernelThrowHelper.ThrowArgument(Op, nameof(gateUp),
                    $"gateUp[{g}] has hidden width {gu.InFeatures}, group 0 has {hidden}");
            }
            hidden = gu.InFeatures;
            totalRows += rowCounts[g];
        }
        if (groups == 0)
        {
            KernelThrowHelper.CheckLength(x.Length, 0, Op, nameof(x), "empty when there are no groups");
            return;
        }
        KernelThrowHelper.CheckLength(x.Length, totalRows * hidden, Op, nameof(x), $"[Σ rowCounts = {totalRows}, {hidden}]");
        fixed (float* px = x, py = y)
        {
            lock (_sync)
            {
                ThrowIfDisposed();
                long offset = 0;
                for (int g = 0; g < groups; g++)
                {
                    int n = rowCounts[g];
                    if (n > 0)
                    {
                        RunFfnLocked(px + (offset * hidden), n, (PackedWeight)gateUp[g], (PackedWeight)down[g], py + (offset * hidden));
                    }
                    offset += n;
                }
            }
        }
    }

    /// <inheritdoc />
    public void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<float> k,
        ReadOnlySpan<float> v, int keys, int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        ThrowIfDisposed();
        const string Op = nameof(Attention);
        p.Validate();
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(keys, 0, Op, nameof(keys));
        KernelThrowHelper.CheckAtLeast(keyPositionStart, 0, Op, nameof(keyPositionStart));
        long qSize = (long)rows * p.Heads * p.HeadDim;
        long kvSize = (long)keys * p.KvHeads * p.HeadDim;
        KernelThrowHelper.CheckLength(q.Length, qSize, Op, nameof(q), "[rows, Heads, HeadDim]");
        KernelThrowHelper.CheckLength(queryPositions.Length, rows, Op, nameof(queryPositions), "[rows]");
        KernelThrowHelper.CheckLength(k.Length, kvSize, Op, nameof(k), "[keys, KvHeads, HeadDim]");
        KernelThrowHelper.CheckLength(v.Length, kvSize, Op, nameof(v), "[keys, KvHeads, HeadDim]");
        KernelThrowHelper.CheckLength(output.Length, qSize, Op, nameof(output), "[rows, Heads, HeadDim]");
        for (int r = 0; r < rows; r++)
        {
            if (queryPositions[r] < 0)
            {
                KernelThrowHelper.ThrowArgument(Op, nameof(queryPositions), $"queryPositions[{r}] = {queryPositions[r]} is negative");
            }
        }
        if (rows == 0)
        {
            return;
        }
        var shape = new AttentionShape(p, keys, keyPositionStart);
        fixed (float* pq = q, pk = k, pv = v, po = output)
        fixed (int* pp = queryPositions)
        {
            lock (_sync)
            {
                ThrowIfDisposed();
                long work = (long)rows * Math.Max(1, shape.MaxSpan) * p.Heads * p.HeadDim;
                bool inline = work < ParallelMacThreshold || _team.Threads == 1;
                if (rows <= DecodeAttentionTask.MaxRows)
                {
                    _decodeAttentionTask.Run(inline ? null : _team, _simd, shape, pq, pp, pk, pv, po, rows);
                    return;
                }
                _attentionTask.Set(_simd, shape, pq, pp, pk, pv, po, rows, _team.Threads);
                if (inline)
                {
                    _attentionTask.Execute(0, 1);
                }
                else
                {
                    _team.Run(_attentionTask);
                }
            }
        }
    }

    private bool IsSmall(int rows, PackedWeight w) =>
        _team.Threads == 1 || (long)rows * w.InFeatures * w.OutFeatures < ParallelMacThreshold;

    /// <summary>
    /// Runs <c>y = x · w</c>; caller holds the lock. For <see cref="PanelLayout.Bf16Pairs"/> weights, x (fp32, row
    /// stride = K) is first rounded into the pair image the bf16 kernels read.
    /// </summary>
    private void RunMatMulLocked(float* x, nint ldx, int rows, PackedWeight w, float* y, nint ldy)
    {
        float* rowScales = null;
        if (w.Layout == PanelLayout.Bf16Pairs)
        {
            x = PairsLocked(x, rows, w, out ldx);
        }
        else if (NeedsInputPass(w))
        {
            x = Fp8InputLocked(x, rows, w, out rowScales);
        }
        if (IsSmall(rows, w))
        {
            MatMulKernels.Compute(_simd, x, ldx, rows, w, 0, w.Panels, y, ldy, rowScales);
            return;
        }
        _matMulTask.Set(_simd, x, ldx, rows, w, y, ldy, _team.Threads, rowScales);
        _team.Run(_matMulTask);
    }

    /// <summary>One FFN over <paramref name="rows"/> rows, in blocks of <see cref="FfnRowBlock"/>; caller holds the lock.</summary>
    private void RunFfnLocked(float* x, int rows, PackedWeight gateUp, PackedWeight down, float* y)
    {
        int hidden = gateUp.InFeatures;
        int inter = down.InFeatures;
        int block = Math.Min(rows, FfnRowBlock);
        float* h = _ffnHidden.Get(2L * block * inter);
        float* act = _ffnActivation.Get((long)block * inter);
        bool paired = inter % PackedWeight.PanelWidth == 0;
        for (int r0 = 0; r0 < rows; r0 += FfnRowBlock)
        {
            int n = Math.Min(FfnRowBlock, rows - r0);
            float* xb = x + ((long)r0 * hidden);
            if (paired && !IsSmall(n, gateUp))
            {
                nint ldx = hidden;
                float* rowScales = null;
                float* xs = gateUp.Layout == PanelLayout.Bf16Pairs ? PairsLocked(xb, n, gateUp, out ldx)
                    : NeedsInputPass(gateUp) ? Fp8InputLocked(xb, n, gateUp, out rowScales)
                    : xb;
                _gateUpTask.Set(_simd, xs, ldx, n, gateUp, h, act, _team.Threads, rowScales);
                _team.Run(_gateUpTask);
            }
            else
            {
                RunMatMulLocked(xb, hidden, n, gateUp, h, 2 * (nint)inter);
                if ((long)n * inter < ParallelElementThreshold || n == 1 || _team.Threads == 1)
                {
                    RowTask.Execute(RowOp.SwiGluActivation, _simd, 0, n, inter, h, act, null, 0f, null, 0, null);
                }
                else
                {
                    _rowTask.Set(RowOp.SwiGluActivation, _simd, n, inter, h, act, null, 0f, null, 0, null);
                    _team.Run(_rowTask);
                }
            }
            RunMatMulLocked(act, inter, n, down, y + ((long)r0 * hidden), hidden);
        }
    }

    // The bf16 pair image of x ([rows, K of w], row stride K) in the backend's buffer, rounded by the team when large;
    // returned as the x operand MatMulKernels takes for pair panels, with its row stride ⌈K/2⌉ (uints) in ldx.
    private float* PairsLocked(float* x, int rows, PackedWeight w, out nint ldx)
    {
        int k = w.InFeatures;
        int kp = w.PairLines;
        float* pairs = _pairInput.Get((long)rows * kp);
        if ((long)rows * k < ParallelElementThreshold || rows == 1 || _team.Threads == 1)
        {
            Bf16DotKernels.ToPairs(x, k, 0, rows, k, (uint*)pairs);
        }
        else
        {
            _rowTask.Set(RowOp.Bf16Pairs, _simd, rows, k, x, pairs, null, 0f, null, 0, null);
            _team.Run(_rowTask);
        }
        ldx = kp;
        return pairs;
    }

    // An FP8 weight whose input needs a pass first: per-token W8A8 quantization, or bf16 rounding at the bf16 precision.
    private bool NeedsInputPass(PackedWeight w) =>
        w.IsFp8 && (w.Fp8Activations == Fp8ActivationMode.PerTokenFp8 || Precision == CpuMatMulPrecision.Bf16);

    // The input of an FP8 weight's matmul (x: [rows, K], row stride K) after its pass, in the backend's buffer (done by
    // the team when large); for W8A8, rowScales receives each row's activation scale.
    private float* Fp8InputLocked(float* x, int rows, PackedWeight w, out float* rowScales)
    {
        int k = w.InFeatures;
        float* prepared = _fp8Input.Get((long)rows * k);
        rowScales = w.Fp8Activations == Fp8ActivationMode.PerTokenFp8 ? _fp8RowScales.Get(rows) : null;
        RowOp op = rowScales != null ? RowOp.Fp8PerToken : RowOp.Bf16Round;
        if ((long)rows * k < ParallelElementThreshold || rows == 1 || _team.Threads == 1)
        {
            RowTask.Execute(op, _simd, 0, rows, k, x, prepared, rowScales, 0f, null, 0, null);
        }
        else
        {
            _rowTask.Set(op, _simd, rows, k, x, prepared, rowScales, 0f, null, 0, null);
            _team.Run(_rowTask);
        }
        return prepared;
    }

    // The small-matmul form of Fp8InputLocked: on the calling thread, buffers from the shared array pool.
    private void ComputeSmallFp8(float* x, int rows, PackedWeight w, float* y)
    {
        int k = w.InFeatures;
        float[] prepared = ArrayPool<float>.Shared.Rent(checked(rows * k));
        float[] scales = ArrayPool<float>.Shared.Rent(rows);
        try
        {
            fixed (float* px = prepared, ps = scales)
            {
                bool perToken = w.Fp8Activations == Fp8ActivationMode.PerTokenFp8;
                RowTask.Execute(perToken ? RowOp.Fp8PerToken : RowOp.Bf16Round, _simd, 0, rows, k, x, px, ps, 0f, null, 0, null);
                MatMulKernels.Compute(_simd, px, k, rows, w, 0, w.Panels, y, w.OutFeatures, perToken ? ps : null);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(prepared);
            ArrayPool<float>.Shared.Return(scales);
        }
    }

    // Small matmuls run on the calling thread without the lock (concurrent callers), so their pair image comes from
    // the shared array pool rather than the backend's buffer.
    private void ComputeSmallBf16(float* x, int rows, PackedWeight w, float* y)
    {
        int kp = w.PairLines;
        uint[] rented = ArrayPool<uint>.Shared.Rent(checked(rows * kp));
        try
        {
            fixed (uint* pairs = rented)
            {
                Bf16DotKernels.ToPairs(x, w.InFeatures, 0, rows, w.InFeatures, pairs);
                MatMulKernels.Compute(_simd, (float*)pairs, kp, rows, w, 0, w.Panels, y, w.OutFeatures);
            }
        }
        finally
        {
            ArrayPool<uint>.Shared.Return(rented);
        }
    }

    private static PackedWeight AsPacked(IWeightMatrix? w, string op, string name)
    {
        if (w is not PackedWeight pw)
        {
            KernelThrowHelper.ThrowForeignWeight(op, name, w);
            return null;
        }
        if (pw.IsDisposed)
        {
            KernelThrowHelper.ThrowArgument(op, name, $"{name} has been disposed");
        }
        return pw;
    }

    private static (PackedWeight GateUp, PackedWeight Down) CheckFfnWeights(IWeightMatrix? gateUp, IWeightMatrix? down, string op, int group)
    {
        string suffix = group >= 0 ? $"[{group}]" : string.Empty;
        var gu = AsPacked(gateUp, op, nameof(gateUp) + suffix);
        var dn = AsPacked(down, op, nameof(down) + suffix);
        if (gu.OutFeatures != 2 * dn.InFeatures || dn.OutFeatures != gu.InFeatures)
        {
            KernelThrowHelper.ThrowArgument(op, nameof(gateUp) + suffix,
                $"gateUp{suffix} is [{gu.InFeatures}, {gu.OutFeatures}] and down{suffix} is [{dn.InFeatures}, {dn.OutFeatures}]; expected [H, 2I] and [I, H]");
        }
        return (gu, dn);
    }
}
