using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>Weights, MatMul and the SwiGLU feed-forward paths.</summary>
public sealed unsafe partial class CudaKernelBackend
{
    /// <inheritdoc />
    public IWeightMatrix CreateWeight(ReadOnlySpan<ushort> bf16, int inFeatures, int outFeatures, WeightLayout layout)
    {
        Require(inFeatures > 0 && outFeatures > 0, $"weight shape must be positive, got [{inFeatures}, {outFeatures}]", nameof(inFeatures));
        Require(layout is WeightLayout.InOut or WeightLayout.OutIn, $"unknown weight layout {layout}", nameof(layout));
        long elements = checked((long)inFeatures * outFeatures);
        Require(bf16.Length == elements, $"weight has {bf16.Length} elements, expected {inFeatures}×{outFeatures} = {elements}", nameof(bf16));
        ObjectDisposedException.ThrowIf(_disposed, this);
        _context.SetCurrent();
        DeviceBuffer data = DeviceBuffer.Allocate(_context.DangerousGetHandle(), elements * 2);
        try
        {
            UploadChunked(data, bf16);
        }
        catch
        {
            data.Dispose();
            throw;
        }
        return new CudaWeightMatrix(this, data, inFeatures, outFeatures, layout);
    }

    /// <inheritdoc />
    public void MatMul(ReadOnlySpan<float> x, int rows, IWeightMatrix w, Span<float> y)
    {
        Require(rows >= 0, $"rows must be ≥ 0, got {rows}", nameof(rows));
        // bf16 or FP8: checked to be this backend's here; the device-pointer core dispatches on the kind.
        _ = w is CudaFp8WeightMatrix ? OwnFp8(w, nameof(w)) : (IWeightMatrix)Own(w, nameof(w));
        int k = w.InFeatures;
        int n = w.OutFeatures;
        Require(x.Length == (long)rows * k, $"x has {x.Length} elements, expected rows×K = {rows}×{k}", nameof(x));
        Require(y.Length == (long)rows * n, $"y has {y.Length} elements, expected rows×N = {rows}×{n}", nameof(y));
        if (rows == 0)
        {
            return;
        }
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        ulong dy = ctx.Device.Alloc((long)rows * n * 4);
        MatMulOnDevice(ctx, w, dx, rows, dy);
        Download(ctx, dy, y);
        call.Complete();
    }

    /// <summary>Queues <c>y = x · W</c> for device x [rows, K] into device y [rows, N] (bf16 weight; scratch from ctx).</summary>
    private void MatMulOnDevice(CudaCallContext ctx, CudaWeightMatrix w, ulong dx, int rows, ulong dy)
    {
        int k = w.InFeatures;
        int n = w.OutFeatures;
        ulong xb = ctx.Device.Alloc((long)RowFactor * rows * k * 2);
        _module.SplitBf16(ctx.Stream.Value, dx, xb, rows, k, Split);
        ulong t = Split ? ctx.Device.Alloc((long)RowFactor * rows * n * 4) : dy;
        Gemm(ctx, w, xb, RowFactor * rows, t);
        if (Split)
        {
            _module.CombineSplit(ctx.Stream.Value, t, dy, rows, n, split: true);
        }
    }

    /// <inheritdoc />
    public void SwiGluFfn(ReadOnlySpan<float> x, int rows, IWeightMatrix gateUp, IWeightMatrix down, Span<float> y)
    {
        Require(rows >= 0, $"rows must be ≥ 0, got {rows}", nameof(rows));
        Span<int> counts = [rows];
        SwiGluFfnGrouped(x, counts, [gateUp], [down], y);
    }

    /// <inheritdoc />
    /// <remarks>All non-empty groups must share H (the width of x); groups that also share the intermediate size run
    /// as one grouped GEMM per stage (<see cref="GroupedGemmPath"/>); otherwise each group runs on its own. The rows are
    /// uploaded once and the result downloaded once; the device work is <see cref="QueueFfn"/>, which the worker's wire
    /// path (<see cref="BeginWireBatch"/>) and <see cref="CudaDeviceStep"/> run on device rows.</remarks>
    public void SwiGluFfnGrouped(ReadOnlySpan<float> x, ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp,
        IReadOnlyList<IWeightMatrix> down, Span<float> y)
    {
        FfnPlan plan = PlanFfn(rowCounts, gateUp, down);
        if (plan.Rows == 0)
        {
            Require(x.Length == 0 && y.Length == 0, "x and y must be empty when every group has 0 rows", nameof(x));
            return;
        }
        Require(x.Length == plan.Rows * plan.Hidden, $"x has {x.Length} elements, expected Σrows×H = {plan.Rows}×{plan.Hidden}", nameof(x));
        Require(y.Length == plan.Rows * plan.Hidden, $"y has {y.Length} elements, expected Σrows×H = {plan.Rows}×{plan.Hidden}", nameof(y));
        using var call = BeginCall();
        CudaCallContext ctx = call.Context;
        ulong dx = Upload(ctx, x);
        ulong dy = ctx.Device.Alloc(plan.Rows * plan.Hidden * 4);
        QueueFfn(ctx, plan, dx, dy);
        Download(ctx, dy, y);
        call.Complete();
    }

    /// <summary>
    /// What one grouped SwiGLU call runs: H, the total rows, and its parts in row order. A part is a row range that runs
    /// as one unit: every non-empty group of an all-bf16 call with one intermediate size together (grouped, padded or per
    /// group, <see cref="ChooseMode"/>); otherwise each non-empty group alone (FP8 groups through <c>fp8_gemm</c>).
    /// </summary>
    internal sealed record FfnPlan(int Hidden, long Rows, IReadOnlyList<FfnPart> Parts);

    /// <summary>Rows <c>[Offset, Offset + Rows)</c> of a call: bf16 <see cref="Groups"/> (offsets relative to the part) or one FP8 expert.</summary>
    internal sealed record FfnPart(long Offset, long Rows, List<FfnGroup>? Groups, int Inter, CudaFp8WeightMatrix? Fp8GateUp, CudaFp8WeightMatrix? Fp8Down);

    /// <summary>
    /// Validates a grouped call's weights (this backend's, gate_up [H, 2I] and down [I, H] agreeing, both FP8 or both
    /// bf16, one H across non-empty groups, no negative count) and splits it into parts as the host call has always run it.
    /// </summary>
    /// <exception cref="ArgumentException">A count, weight or shape is wrong; the message names the group.</exception>
    internal FfnPlan PlanFfn(ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp, IReadOnlyList<IWeightMatrix> down)
    {
        ArgumentNullException.ThrowIfNull(gateUp);
        ArgumentNullException.ThrowIfNull(down);
        Require(gateUp.Count == rowCounts.Length && down.Count == rowCounts.Length,
            $"rowCounts ({rowCounts.Length}), gateUp ({gateUp.Count}) and down ({down.Count}) must have one entry per group", nameof(rowCounts));
        bool anyFp8 = false;
        int hidden = -1;
        int inter = -1;
        bool uniform = true;
        long total = 0;
        for (int g = 0; g < rowCounts.Length; g++)
        {
            Require(rowCounts[g] >= 0, $"rowCounts[{g}] = {rowCounts[g]} is negative", nameof(rowCounts));
            int h = FfnHidden(gateUp[g], down[g], g);
            anyFp8 |= gateUp[g] is CudaFp8WeightMatrix;
            if (rowCounts[g] == 0)
            {
                continue;
            }
            Require(hidden < 0 || h == hidden, $"gateUp[{g}] has H = {h}, other groups {hidden}", nameof(gateUp));
            int gi = gateUp[g].OutFeatures / 2;
            uniform &= inter < 0 || gi == inter;
            hidden = h;
            inter = gi;
            total += rowCounts[g];
        }
        var parts = new List<FfnPart>();
        var together = new List<FfnGroup>();
        long offset = 0;
        for (int g = 0; g < rowCounts.Length; g++)
        {
            int rows = rowCounts[g];
            if (rows == 0)
            {
                continue;
            }
            if (gateUp[g] is CudaFp8WeightMatrix gu)
            {
                parts.Add(new FfnPart(offset, rows, null, 0, gu, (CudaFp8WeightMatrix)down[g]));
            }
            else
            {
                var group = new FfnGroup((CudaWeightMatrix)gateUp[g], (CudaWeightMatrix)down[g], 0, rows);
                if (anyFp8 || !uniform)
                {
                    parts.Add(new FfnPart(offset, rows, [group], group.GateUp.OutFeatures / 2, null, null));
                }
                else
                {
                    together.Add(group with { Offset = offset });
                }
            }
            offset += rows;
        }
        if (together.Count > 0)
        {
            parts.Add(new FfnPart(0, total, together, inter, null, null));
        }
        return new FfnPlan(Math.Max(hidden, 0), total, parts);
    }

    /// <summary>
    /// Queues <paramref name="plan"/> on device x [rows, H] into device y [rows, H] on the call's stream: each part on
    /// its row range, the part's scratch released once its work is queued. The same kernels and cuBLAS calls with the same
    /// shapes whoever calls it (host-span, wire or device-step), so the results agree bit for bit.
    /// </summary>
    internal void QueueFfn(CudaCallContext ctx, FfnPlan plan, ulong dx, ulong dy)
    {
        int hidden = plan.Hidden;
        foreach (FfnPart part in plan.Parts)
        {
            ulong px = dx + (ulong)(part.Offset * hidden * 4);
            ulong py = dy + (ulong)(part.Offset * hidden * 4);
            var mark = ctx.Device.Mark();
            if (part.Fp8GateUp is { } gu)
            {
                RunFfnFp8OnDevice(ctx, px, (int)part.Rows, gu, part.Fp8Down!, py);
            }
            else
            {
                List<FfnGroup> groups = part.Groups!;
                StageMode mode = ChooseMode(groups, part.Rows);
                LastGroupedMode = mode switch
                {
                    StageMode.Grouped => "grouped",
                    StageMode.Padded => "padded-batched",
                    _ => groups.Count == 1 ? "single" : "per-group",
                };
                RunFfnOnDevice(ctx, mode, px, groups, part.Rows, hidden, part.Inter, py);
            }
            ctx.Device.Release(mark);
        }
    }

    internal readonly record struct FfnGroup(CudaWeightMatrix GateUp, CudaWeightMatrix Down, long Offset, long Rows);

    /// <summary>Why the padded batched path is unusable (start-up probe), or null when it is usable.</summary>
    private string? _paddedProblem;

    /// <summary>Path the last SwiGluFfn/SwiGluFfnGrouped call took (single, per-group, padded-batched, grouped); diagnostics.</summary>
    internal string LastGroupedMode { get; private set; } = "";

    private const long MaxExtraPaddedRows = 512;

    private enum StageMode
    {
        PerGroup,
        Grouped,
        Padded,
    }

    /// <summary>
    /// The GEMM path for one grouped call: the grouped API when usable; else, for Auto or PaddedBatched, one pointer-array
    /// batched GEMM over groups padded to the largest group when all groups share a layout and the padded row count is at
    /// most max(2·rows, rows + 512); else one GemmEx per group.
    /// </summary>
    private StageMode ChooseMode(List<FfnGroup> groups, long rows)
    {
        if (groups.Count == 1 || Options.GroupedGemm == CudaGroupedGemm.PerGroup)
        {
            return StageMode.PerGroup;
        }
        if (_groupedAddress != 0)
        {
            return StageMode.Grouped;
        }
        if (_paddedProblem is not null)
        {
            return StageMode.PerGroup;
        }
        WeightLayout layout = groups[0].GateUp.Layout;
        bool uniform = groups.TrueForAll(g => g.GateUp.Layout == layout && g.Down.Layout == groups[0].Down.Layout);
        // Small groups are memory-bound (the GEMM reads each expert's weights once whatever its row count, and a tile is
        // ≥ 16 rows wide anyway), so padding them is nearly free; the cap bounds the extra scratch (512 rows ≈ 67 MB of
        // fp32 gate_up output at Maverick width in Split precision).
        long padded = groups.Count * groups.Max(g => g.Rows);
        return uniform && padded <= Math.Max(2 * rows, rows + MaxExtraPaddedRows) ? StageMode.Padded : StageMode.PerGroup;
    }

    /// <summary>Queues the grouped SwiGLU FFN of a bf16 part (<see cref="QueueFfn"/>) on device x [rows, hidden] into device y.</summary>
    private void RunFfnOnDevice(CudaCallContext ctx, StageMode mode, ulong dx, List<FfnGroup> groups, long rows, int hidden, int inter, ulong dy)
    {
        int f = RowFactor;
        nint stream = ctx.Stream.Value;
        ulong map = 0;
        long layoutRows = rows;
        long stride = 0;
        if (mode == StageMode.Padded)
        {
            // Group g occupies rows [g·maxRows, g·maxRows + rows_g) of the padded layout; the padding rows hold
            // garbage that only ever reaches their own (discarded) GEMM output columns.
            stride = groups.Max(g => g.Rows);
            layoutRows = groups.Count * stride;
            int[] rowMap = new int[rows];
            for (int g = 0; g < groups.Count; g++)
            {
                for (long i = 0; i < groups[g].Rows; i++)
                {
                    rowMap[groups[g].Offset + i] = checked((int)(g * stride + i));
                }
            }
            map = Upload<int>(ctx, rowMap);
        }
        ulong xb = ctx.Device.Alloc(f * layoutRows * hidden * 2);
        _module.SplitBf16(stream, dx, xb, rows, hidden, Split, map);
        ulong t1 = ctx.Device.Alloc(f * layoutRows * 2L * inter * 4);
        Stage(ctx, mode, groups, up: true, xb, hidden, t1, 2 * inter, stride);
        ulong h = ctx.Device.Alloc(f * layoutRows * inter * 2L);
        _module.SwiGluSplit(stream, t1, h, layoutRows, inter, Split);
        bool direct = mode != StageMode.Padded && !Split;
        ulong t2 = direct ? dy : ctx.Device.Alloc(f * layoutRows * hidden * 4);
        Stage(ctx, mode, groups, up: false, h, inter, t2, hidden, stride);
        if (!direct)
        {
            _module.CombineSplit(stream, t2, dy, rows, hidden, Split, map);
        }
    }

    /// <summary>
    /// One GEMM stage over all groups: group g multiplies its <c>f·rows_g</c> bf16 rows of <paramref name="b"/>
    /// (<paramref name="k"/> wide) by its weight into fp32 rows of <paramref name="c"/> (<paramref name="n"/> wide).
    /// Rows of group g start at row f·offset_g, or at f·g·<paramref name="paddedStride"/> in the padded layout.
    /// </summary>
    private void Stage(CudaCallContext ctx, StageMode mode, List<FfnGroup> groups, bool up, ulong b, int k, ulong c, int n,
        long paddedStride)
    {
        int f = RowFactor;
        int count = groups.Count;
        if (mode == StageMode.PerGroup)
        {
            foreach (FfnGroup g in groups)
            {
                CudaWeightMatrix w = up ? g.GateUp : g.Down;
                Gemm(ctx, w, b + (ulong)(f * g.Offset * k * 2), (int)(f * g.Rows), c + (ulong)(f * g.Offset * n * 4));
            }
            return;
        }
        var pointers = new ulong[3 * count];
        for (int i = 0; i < count; i++)
        {
            FfnGroup g = groups[i];
            long firstRow = mode == StageMode.Padded ? f * i * paddedStride : f * g.Offset;
            pointers[i] = (up ? g.GateUp : g.Down).Pointer;
            pointers[count + i] = b + (ulong)(firstRow * k * 2);
            pointers[2 * count + i] = c + (ulong)(firstRow * n * 4);
        }
        // cuBLAS reads the pointer arrays from device memory; the copy is ordered before the GEMM on the same stream.
        ulong devicePointers = Upload<ulong>(ctx, pointers);
        if (mode == StageMode.Padded)
        {
            CudaWeightMatrix w0 = up ? groups[0].GateUp : groups[0].Down;
            BatchedGemm(ctx, w0.OpA, w0.OutFeatures, (int)(f * paddedStride), w0.InFeatures, w0.Lda, count, devicePointers);
            return;
        }
        int[] ints = new int[9 * count];
        float[] scalars = new float[2 * count];
        for (int i = 0; i < count; i++)
        {
            FfnGroup g = groups[i];
            CudaWeightMatrix w = up ? g.GateUp : g.Down;
            ints[i] = w.OpA;
            ints[count + i] = CuBlas.OpN;
            ints[2 * count + i] = w.OutFeatures;
            ints[3 * count + i] = (int)(f * g.Rows);
            ints[4 * count + i] = w.InFeatures;
            ints[5 * count + i] = w.Lda;
            ints[6 * count + i] = k;
            ints[7 * count + i] = n;
            ints[8 * count + i] = 1;
            scalars[i] = 1f;
        }
        GroupedGemm(ctx, _groupedAddress, ints, scalars, count, devicePointers);
    }

    /// <summary>
    /// cublasGemmBatchedEx over <paramref name="count"/> problems of one shape; <paramref name="devicePointers"/> holds
    /// the A, B and C pointer arrays back to back (device memory).
    /// </summary>
    internal static void BatchedGemm(CudaCallContext ctx, int opA, int m, int n, int k, int lda, int count, ulong devicePointers)
    {
        float alpha = 1f;
        float beta = 0f;
        int status = CuBlas.cublasGemmBatchedEx(ctx.Blas.Value, opA, CuBlas.OpN, m, n, k, &alpha, devicePointers, CuBlas.R16BF, lda,
            devicePointers + (ulong)(8 * count), CuBlas.R16BF, k, &beta, devicePointers + (ulong)(16 * count), CuBlas.R32F, m, count,
            CuBlas.Compute32F, CuBlas.GemmDefault);
        if (status != CuBlas.StatusSuccess)
        {
            throw new CudaException($"cublasGemmBatchedEx(m={m}, n={n}, k={k}, batch={count}) failed: {CuBlas.Describe(status)}")
            {
                Call = "cublasGemmBatchedEx",
                Status = status,
            };
        }
    }

    /// <summary>Calls cublasGemmGroupedBatchedEx with the packed host arrays of <see cref="Stage"/>.</summary>
    internal static void GroupedGemm(CudaCallContext ctx, nint address, int[] ints, float[] scalars, int count, ulong devicePointers,
        int cType = CuBlas.R32F)
    {
        fixed (int* p = ints)
        fixed (float* s = scalars)
        {
            int status = CuBlas.GemmGroupedBatchedEx(address, ctx.Blas.Value, p, p + count, p + 2 * count, p + 3 * count,
                p + 4 * count, s, devicePointers, CuBlas.R16BF, p + 5 * count, devicePointers + (ulong)(8 * count), CuBlas.R16BF,
                p + 6 * count, s + count, devicePointers + (ulong)(16 * count), cType, p + 7 * count, count, p + 8 * count,
                CuBlas.Compute32F);
            CuBlas.Check(status, "cublasGemmGroupedBatchedEx");
        }
    }

    /// <summary>
    /// Row-major <c>C[n, N] = B[n, K] · W</c> with bf16 B and W, fp32 C: column-major <c>Cᵀ = op(W)·Bᵀ</c>, m = N, k = K.
    /// </summary>
    internal static void Gemm(CudaCallContext ctx, CudaWeightMatrix w, ulong b, int n, ulong c, float beta = 0f)
    {
        if (n == 0)
        {
            return;
        }
        float alpha = 1f;
        int m = w.OutFeatures;
        int k = w.InFeatures;
        int status = CuBlas.cublasGemmEx(ctx.Blas.Value, w.OpA, CuBlas.OpN, m, n, k, &alpha, w.Pointer, CuBlas.R16BF, w.Lda,
            b, CuBlas.R16BF, k, &beta, c, CuBlas.R32F, m, CuBlas.Compute32F, CuBlas.GemmDefault);
        if (status != CuBlas.StatusSuccess)
        {
            throw new CudaException($"cublasGemmEx(m={m}, n={n}, k={k}, opA={w.OpA}, lda={w.Lda}) failed: {CuBlas.Describe(status)}")
            {
                Call = "cublasGemmEx",
                Status = status,
            };
        }
    }

    /// <summary>
    /// Picks the grouped GEMM path: the grouped API when requested (or Auto) and the loaded cuBLAS exports it and a small
    /// exact problem (integers, so every summation order gives the same floats) matches per-group GemmEx bit for bit.
    /// </summary>
    private (nint Address, string Description) ChooseGroupedPath()
    {
        if (Options.GroupedGemm == CudaGroupedGemm.PerGroup)
        {
            return (0, "per-group cublasGemmEx (requested)");
        }
        _paddedProblem = ProbeBatched();
        if (_paddedProblem is not null && Options.GroupedGemm == CudaGroupedGemm.PaddedBatched)
        {
            throw new CudaUnavailableException($"padded batched GEMM requested but unusable: {_paddedProblem}");
        }
        string fallback = _paddedProblem is null
            ? "padded cublasGemmBatchedEx (padded rows ≤ max(2×, +512), one layout) else per-group cublasGemmEx"
            : $"per-group cublasGemmEx (cublasGemmBatchedEx unusable: {_paddedProblem})";
        if (Options.GroupedGemm == CudaGroupedGemm.PaddedBatched)
        {
            return (0, fallback + " (requested)");
        }
        nint address = CuBlas.GroupedBatchedExAddress;
        string? problem = address == 0 ? "cublasGemmGroupedBatchedEx not exported by this cuBLAS (needs ≥ 12.5)" : ProbeGrouped(address);
        if (problem is null)
        {
            return (address, "cublasGemmGroupedBatchedEx");
        }
        if (Options.GroupedGemm == CudaGroupedGemm.Grouped)
        {
            throw new CudaUnavailableException($"grouped GEMM requested but unusable: {problem}");
        }
        return (0, $"{fallback}; grouped API unusable: {problem}");
    }

    /// <summary>
    /// Checks that cublasGemmBatchedEx accepts bf16 in / fp32 out and matches per-problem GemmEx bit for bit on a small
    /// exact problem (integer values). Returns null when usable, else the reason.
    /// </summary>
    private string? ProbeBatched()
    {
        const int k = 64;
        const int n = 48;
        const int stride = 5;
        const int count = 3;
        var weights = new List<CudaWeightMatrix>();
        try
        {
            for (int g = 0; g < count; g++)
            {
                var bits = new ushort[k * n];
                for (int i = 0; i < bits.Length; i++)
                {
                    bits[i] = DTypeInfo.FloatToBf16(((i * 5 + g * 7) % 9) - 4);
                }
                weights.Add((CudaWeightMatrix)CreateWeight(bits, k, n, WeightLayout.InOut));
            }
            var x = new ushort[count * stride * k];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = DTypeInfo.FloatToBf16(((i * 3) % 7) - 3);
            }
            var expected = new float[count * stride * n];
            var actual = new float[count * stride * n];
            using var call = BeginCall();
            CudaCallContext ctx = call.Context;
            try
            {
                ulong b = Upload<ushort>(ctx, x);
                ulong c1 = ctx.Device.Alloc(expected.Length * 4L);
                ulong c2 = ctx.Device.Alloc(actual.Length * 4L);
                var pointers = new ulong[3 * count];
                for (int g = 0; g < count; g++)
                {
                    Gemm(ctx, weights[g], b + (ulong)(g * stride * k * 2), stride, c1 + (ulong)(g * stride * n * 4));
                    pointers[g] = weights[g].Pointer;
                    pointers[count + g] = b + (ulong)(g * stride * k * 2);
                    pointers[2 * count + g] = c2 + (ulong)(g * stride * n * 4);
                }
                ulong devicePointers = Upload<ulong>(ctx, pointers);
                BatchedGemm(ctx, weights[0].OpA, n, stride, k, weights[0].Lda, count, devicePointers);
                Download(ctx, c1, expected.AsSpan());
                Download(ctx, c2, actual.AsSpan());
                call.Complete();
            }
            catch (CudaException e)
            {
                return e.Call == "cublasGemmBatchedEx" ? CuBlas.Describe(e.Status) : $"probe failed: {e.Message}";
            }
            return ProbeMismatch(expected, actual, "batched");
        }
        finally
        {
            foreach (CudaWeightMatrix w in weights)
            {
                w.Dispose();
            }
        }
    }

    private string? ProbeGrouped(nint address)
    {
        const int k = 64;
        const int n = 48;
        int[] rows = [3, 5, 1];
        var weights = new List<CudaWeightMatrix>();
        try
        {
            var groups = new List<FfnGroup>();
            long offset = 0;
            for (int g = 0; g < rows.Length; g++)
            {
                var bits = new ushort[k * n];
                for (int i = 0; i < bits.Length; i++)
                {
                    bits[i] = DTypeInfo.FloatToBf16(((i * 7 + g * 3) % 5) - 2);
                }
                var layout = g == 1 ? WeightLayout.OutIn : WeightLayout.InOut;
                var w = (CudaWeightMatrix)CreateWeight(bits, k, n, layout);
                weights.Add(w);
                groups.Add(new FfnGroup(w, w, offset, rows[g]));
                offset += rows[g];
            }
            var x = new ushort[offset * k];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = DTypeInfo.FloatToBf16(((i * 3) % 7) - 3);
            }
            var expected = new float[offset * n];
            var actual = new float[offset * n];
            using var call = BeginCall();
            CudaCallContext ctx = call.Context;
            try
            {
                ulong b = Upload<ushort>(ctx, x);
                ulong c1 = ctx.Device.Alloc(expected.Length * 4L);
                ulong c2 = ctx.Device.Alloc(actual.Length * 4L);
                foreach (FfnGroup g in groups)
                {
                    Gemm(ctx, g.GateUp, b + (ulong)(g.Offset * k * 2), (int)g.Rows, c1 + (ulong)(g.Offset * n * 4));
                }
                int count = groups.Count;
                int[] ints = new int[9 * count];
                float[] scalars = new float[2 * count];
                var pointers = new ulong[3 * count];
                for (int i = 0; i < count; i++)
                {
                    CudaWeightMatrix w = groups[i].GateUp;
                    ints[i] = w.OpA;
                    ints[count + i] = CuBlas.OpN;
                    ints[2 * count + i] = n;
                    ints[3 * count + i] = (int)groups[i].Rows;
                    ints[4 * count + i] = k;
                    ints[5 * count + i] = w.Lda;
                    ints[6 * count + i] = k;
                    ints[7 * count + i] = n;
                    ints[8 * count + i] = 1;
                    scalars[i] = 1f;
                    pointers[i] = w.Pointer;
                    pointers[count + i] = b + (ulong)(groups[i].Offset * k * 2);
                    pointers[2 * count + i] = c2 + (ulong)(groups[i].Offset * n * 4);
                }
                ulong devicePointers = Upload<ulong>(ctx, pointers);
                GroupedGemm(ctx, address, ints, scalars, count, devicePointers);
                Download(ctx, c1, expected.AsSpan());
                Download(ctx, c2, actual.AsSpan());
                call.Complete();
            }
            catch (CudaException e)
            {
                return e.Call == "cublasGemmGroupedBatchedEx" ? CuBlas.Describe(e.Status) : $"probe failed: {e.Message}";
            }
            return ProbeMismatch(expected, actual, "grouped");
        }
        finally
        {
            foreach (CudaWeightMatrix w in weights)
            {
                w.Dispose();
            }
        }
    }

    /// <summary>Null when a probe path matched plain GemmEx bit for bit, else where it first differed.</summary>
    private static string? ProbeMismatch(float[] expected, float[] actual, string path)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                return $"probe mismatch at element {i}: {path} {actual[i]} vs GemmEx {expected[i]}";
            }
        }
        return null;
    }
}
