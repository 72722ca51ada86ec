namespace Distributed.Kernels.Cuda;

/// <summary>Routed experts on the step's device rows (the in-process MoE block with no host round trip).</summary>
public sealed partial class CudaDeviceStep
{
    /// <summary>True when this step runs on <paramref name="backend"/> (its weights can be used here).</summary>
    public bool RunsOn(CudaKernelBackend backend) => ReferenceEquals(_owner, backend);

    /// <summary>
    /// The routed experts of one MoE layer on device rows, as an in-process dispatcher computes them on the host
    /// (<c>DispatchPlan.GatherScaled</c> → <see cref="IKernelBackend.SwiGluFfnGrouped"/> → <c>DispatchPlan.Combine</c>), bit for
    /// bit: routed row r is <c>x[pairTokens[r]] · pairScores[r]</c> (one fp32 multiply), rows grouped by expert in
    /// <paramref name="rowCounts"/> order run through the grouped FFN (the same device work as the host-span call), and
    /// <c>output[t] = Σ_s expertOut[rowOf[t·topK + s]]</c> in slot order from the slot-0 row. With
    /// <paramref name="roundDispatchBf16"/> / <paramref name="roundCombineBf16"/> the routed rows / expert outputs are rounded
    /// through bf16 as a bf16 data plane would. Only the three index/score arrays go up (counted in
    /// <see cref="UploadedBytes"/>); nothing comes down.
    /// </summary>
    /// <param name="x"><c>[tokens, hidden]</c>: the MoE block input.</param>
    /// <param name="tokens">Tokens of the step.</param>
    /// <param name="hidden">Row width H.</param>
    /// <param name="pairTokens">Per routed row (grouped order), its token.</param>
    /// <param name="pairScores">Per routed row, its router score.</param>
    /// <param name="rowOf">Per (token, slot), <c>[tokens, topK]</c>, its routed row.</param>
    /// <param name="topK">Slots per token.</param>
    /// <param name="rowCounts">Routed rows per expert group, in row order.</param>
    /// <param name="gateUp">Per group, the expert's gate_up weight of this backend.</param>
    /// <param name="down">Per group, its down weight.</param>
    /// <param name="roundDispatchBf16">Round the routed input rows through bf16.</param>
    /// <param name="roundCombineBf16">Round each expert output row through bf16 before the slot sum.</param>
    /// <param name="output"><c>[tokens, hidden]</c>, overwritten.</param>
    /// <exception cref="ArgumentException">Inconsistent sizes or indices, or weights <see cref="IKernelBackend.SwiGluFfnGrouped"/> refuses.</exception>
    public void RoutedExperts(DeviceTensor x, int tokens, int hidden, ReadOnlySpan<int> pairTokens, ReadOnlySpan<float> pairScores, ReadOnlySpan<int> rowOf,
        int topK, ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp, IReadOnlyList<IWeightMatrix> down, bool roundDispatchBf16,
        bool roundCombineBf16, DeviceTensor output)
    {
        Check();
        Require(tokens >= 0 && hidden > 0 && topK > 0, $"tokens must be ≥ 0, hidden and topK > 0, got {tokens}, {hidden}, {topK}", nameof(tokens));
        Require(x.Length == (long)tokens * hidden, $"x has {x.Length} floats, expected {tokens}×{hidden}", nameof(x));
        Require(output.Length == x.Length, $"output has {output.Length} floats, expected {x.Length}", nameof(output));
        int rows = pairTokens.Length;
        Require(pairScores.Length == rows, $"pairScores has {pairScores.Length} entries, pairTokens {rows}", nameof(pairScores));
        Require(rowOf.Length == (long)tokens * topK && rows == rowOf.Length, $"rowOf has {rowOf.Length} entries, expected tokens×topK = {tokens}×{topK} = routed rows {rows}",
            nameof(rowOf));
        for (int r = 0; r < rows; r++)
        {
            Require((uint)pairTokens[r] < (uint)tokens, $"pairTokens[{r}] = {pairTokens[r]} is outside [0, {tokens})", nameof(pairTokens));
            Require((uint)rowOf[r] < (uint)rows, $"rowOf[{r}] = {rowOf[r]} is outside [0, {rows})", nameof(rowOf));
        }
        var plan = _owner.PlanFfn(rowCounts, gateUp, down);
        Require(plan.Rows == rows, $"rowCounts sum to {plan.Rows}, the routed rows are {rows}", nameof(rowCounts));
        Require(rows == 0 || plan.Hidden == hidden, $"the experts have H = {plan.Hidden}, the rows {hidden}", nameof(hidden));
        if (tokens == 0)
        {
            return;
        }
        var mark = _ctx.Device.Mark();
        ulong dTokens = CudaKernelBackend.Upload(_ctx, pairTokens);
        ulong dScores = CudaKernelBackend.Upload(_ctx, pairScores);
        ulong dRowOf = CudaKernelBackend.Upload(_ctx, rowOf);
        UploadedBytes += 4L * (pairTokens.Length + pairScores.Length + rowOf.Length);
        ulong routed = _ctx.Device.Alloc((long)rows * hidden * 4);
        ulong expertOut = _ctx.Device.Alloc((long)rows * hidden * 4);
        Module.GatherScaledRows(Stream, x.Pointer, dTokens, dScores, routed, rows, hidden, roundDispatchBf16);
        _owner.QueueFfn(_ctx, plan, routed, expertOut);
        Module.CombineRows(Stream, expertOut, dRowOf, output.Pointer, tokens, topK, hidden, roundCombineBf16);
        _ctx.Device.Release(mark);
    }
}
