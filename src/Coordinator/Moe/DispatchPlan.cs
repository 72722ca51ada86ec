namespace Distributed.Coordinator.Moe;

/// <summary>
/// A routing decision regrouped by expert: the (token, slot) pairs sorted by expert id, then token, then slot.
/// Rows of one expert are consecutive, which is what a grouped GEMM and the wire format want.
/// </summary>
public sealed class DispatchPlan
{
    private int[]? _rowOf;

    private DispatchPlan(int tokens, int topK, int[] experts, int[] rowCounts, int[] pairTokens, int[] pairSlots)
    {
        Tokens = tokens;
        TopK = topK;
        Experts = experts;
        RowCounts = rowCounts;
        PairTokens = pairTokens;
        PairSlots = pairSlots;
    }

    /// <summary>Tokens in the batch.</summary>
    public int Tokens { get; }
    /// <summary>Slots per token.</summary>
    public int TopK { get; }
    /// <summary>Distinct experts used, ascending.</summary>
    public int[] Experts { get; }
    /// <summary>Rows per entry of <see cref="Experts"/>.</summary>
    public int[] RowCounts { get; }
    /// <summary>For routed row r (in grouped order), the token it came from.</summary>
    public int[] PairTokens { get; }
    /// <summary>For routed row r, its slot in the token's top-k.</summary>
    public int[] PairSlots { get; }
    /// <summary>Total routed rows (tokens × TopK).</summary>
    public int Rows => PairTokens.Length;

    /// <summary>Builds the plan, validating every expert id against <paramref name="numExperts"/>.</summary>
    /// <exception cref="ArgumentException">An expert id is out of range or the routing arrays disagree.</exception>
    public static DispatchPlan Build(RoutingResult routing, int numExperts)
    {
        int topK = routing.TopK;
        if (topK <= 0 || routing.ExpertIds.Length % topK != 0 || routing.Weights.Length != routing.ExpertIds.Length)
        {
            throw new ArgumentException("routing arrays do not form [tokens, topK]", nameof(routing));
        }
        var ids = routing.ExpertIds.Span;
        int rows = ids.Length;
        var counts = new int[numExperts];
        for (int r = 0; r < rows; r++)
        {
            int e = ids[r];
            if ((uint)e >= (uint)numExperts)
            {
                throw new ArgumentException($"expert id {e} out of range [0, {numExperts})", nameof(routing));
            }
            counts[e]++;
        }
        var start = new int[numExperts];
        int used = 0;
        for (int e = 0, acc = 0; e < numExperts; e++)
        {
            start[e] = acc;
            acc += counts[e];
            if (counts[e] > 0)
            {
                used++;
            }
        }
        var experts = new int[used];
        var rowCounts = new int[used];
        for (int e = 0, u = 0; e < numExperts; e++)
        {
            if (counts[e] > 0)
            {
                experts[u] = e;
                rowCounts[u++] = counts[e];
            }
        }
        var pairTokens = new int[rows];
        var pairSlots = new int[rows];
        for (int r = 0; r < rows; r++)
        {
            int pos = start[ids[r]]++;
            pairTokens[pos] = r / topK;
            pairSlots[pos] = r % topK;
        }
        return new DispatchPlan(rows / topK, topK, experts, rowCounts, pairTokens, pairSlots);
    }

    /// <summary>Per (token, slot), <c>[Tokens, TopK]</c>, the routed row (grouped order) that carries it.</summary>
    public int[] RowOf
    {
        get
        {
            if (_rowOf is null)
            {
                var rowOf = new int[Tokens * TopK];
                for (int r = 0; r < PairTokens.Length; r++)
                {
                    rowOf[PairTokens[r] * TopK + PairSlots[r]] = r;
                }
                _rowOf = rowOf;
            }
            return _rowOf;
        }
    }

    /// <summary>The router score of routed row <paramref name="r"/>, from the routing's <c>[Tokens, TopK]</c> <paramref name="weights"/>.</summary>
    public float RowScore(int r, ReadOnlySpan<float> weights) => weights[PairTokens[r] * TopK + PairSlots[r]];

    /// <summary>Fills <paramref name="rows"/> (<c>[Rows, hidden]</c>) with <c>score · hidden[token]</c> in grouped order.</summary>
    public void GatherScaled(ReadOnlySpan<float> hidden, int hiddenSize, ReadOnlySpan<float> weights, Span<float> rows)
    {
        for (int r = 0; r < PairTokens.Length; r++)
        {
            int t = PairTokens[r];
            float score = RowScore(r, weights);
            var src = hidden.Slice(t * hiddenSize, hiddenSize);
            var dst = rows.Slice(r * hiddenSize, hiddenSize);
            for (int j = 0; j < hiddenSize; j++)
            {
                dst[j] = src[j] * score;
            }
        }
    }

    /// <summary>
    /// Adds <c>Σ_s expertOut[row(t, s)]</c> to <c>output[t]</c>: the slot sum is formed first exactly as
    /// <see cref="Combine"/> forms it, then added once, so the result is bitwise <c>output[t] + Combine(...)[t]</c>
    /// (with top-1 the expert row is added directly).
    /// </summary>
    public void CombineAdd(ReadOnlySpan<float> expertOut, int hiddenSize, Span<float> output)
    {
        var rowOf = RowOf;
        var sum = TopK == 1 ? [] : new float[hiddenSize];
        for (int t = 0; t < Tokens; t++)
        {
            var dst = output.Slice(t * hiddenSize, hiddenSize);
            var first = expertOut.Slice(rowOf[t * TopK] * hiddenSize, hiddenSize);
            if (TopK == 1)
            {
                for (int j = 0; j < hiddenSize; j++)
                {
                    dst[j] += first[j];
                }
                continue;
            }
            first.CopyTo(sum);
            for (int s = 1; s < TopK; s++)
            {
                var src = expertOut.Slice(rowOf[t * TopK + s] * hiddenSize, hiddenSize);
                for (int j = 0; j < hiddenSize; j++)
                {
                    sum[j] += src[j];
                }
            }
            for (int j = 0; j < hiddenSize; j++)
            {
                dst[j] += sum[j];
            }
        }
    }

    /// <summary>
    /// Writes <c>output[t] = Σ_s expertOut[row(t, s)]</c>, summing slots in ascending order starting from the slot-0 row
    /// (so top-1 is an exact copy). <paramref name="expertOut"/> is <c>[Rows, hidden]</c> in grouped order.
    /// </summary>
    public void Combine(ReadOnlySpan<float> expertOut, int hiddenSize, Span<float> output)
    {
        var rowOf = RowOf;
        for (int t = 0; t < Tokens; t++)
        {
            var dst = output.Slice(t * hiddenSize, hiddenSize);
            expertOut.Slice(rowOf[t * TopK] * hiddenSize, hiddenSize).CopyTo(dst);
            for (int s = 1; s < TopK; s++)
            {
                var src = expertOut.Slice(rowOf[t * TopK + s] * hiddenSize, hiddenSize);
                for (int j = 0; j < hiddenSize; j++)
                {
                    dst[j] += src[j];
                }
            }
        }
    }
}
