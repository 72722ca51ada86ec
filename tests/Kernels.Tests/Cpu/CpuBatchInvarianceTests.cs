namespace Distributed.Kernels.Tests.Cpu;

/// <summary>
/// A row's result must be bitwise identical whether it is computed alone or inside a batch of any size, at any
/// position in the batch, and with any thread count.
/// </summary>
[Trait("Category", "Unit")]
public sealed class CpuBatchInvarianceTests
{
    private static readonly int[] s_batchSizes = [1, 2, 3, 7, 8, 9, 15, 16, 17, 64, 65, 130];

    public static TheoryData<string> Backends => TestBackends.Names;

    /// <summary>Runs an op over rows [start, start + count) of the inputs; returns that many output rows.</summary>
    private delegate float[] RowsOp(int start, int count);

    private static void AssertInvariant(RowsOp op, int totalRows, int outWidth, string what)
    {
        var alone = new float[totalRows][];
        for (int r = 0; r < totalRows; r++)
        {
            alone[r] = op(r, 1);
        }
        foreach (int batch in s_batchSizes.Where(s => s <= totalRows))
        {
            // Two placements: the batch at the start, and ending at the last row (the row sits at a different slot).
            foreach (int start in new[] { 0, totalRows - batch })
            {
                var y = op(start, batch);
                for (int i = 0; i < batch; i++)
                {
                    TestData.AssertBitwiseEqual(alone[start + i], y.AsSpan(i * outWidth, outWidth),
                        $"{what}: row {start + i} in a batch of {batch} starting at {start}");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_RowAloneEqualsRowInAnyBatch(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (var (k, n, layout) in new[] { (96, 200, WeightLayout.OutIn), (33, 64, WeightLayout.InOut), (300, 1100, WeightLayout.InOut) })
        {
            const int Total = 130;
            var x = TestData.Floats(Total * k, k);
            using var w = b.CreateWeight(TestData.Bf16(k * n, n), k, n, layout);
            AssertInvariant((s, c) =>
            {
                var y = new float[c * n];
                b.MatMul(x.AsSpan(s * k, c * k), c, w, y);
                return y;
            }, Total, n, $"{backend} MatMul K={k} N={n}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_ThreadCountDoesNotChangeResults(string backend)
    {
        var b = TestBackends.Get(backend);
        var single = TestBackends.SingleThreaded(backend);
        const int K = 257, N = 700, Rows = 19;
        var bits = TestData.Bf16(K * N, 9);
        var x = TestData.Floats(Rows * K, 10);
        using var w1 = b.CreateWeight(bits, K, N, WeightLayout.OutIn);
        using var w2 = single.CreateWeight(bits, K, N, WeightLayout.OutIn);
        var y1 = new float[Rows * N];
        var y2 = new float[Rows * N];
        b.MatMul(x, Rows, w1, y1);
        single.MatMul(x, Rows, w2, y2);
        TestData.AssertBitwiseEqual(y2, y1, $"{backend} vs 1 thread");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfn_RowAloneEqualsRowInAnyBatch(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (var (h, inter) in new[] { (64, 96), (40, 50) })
        {
            const int Total = 70;
            var x = TestData.Floats(Total * h, h);
            using var gu = b.CreateWeight(TestData.Bf16(h * 2 * inter, 1), h, 2 * inter, WeightLayout.InOut);
            using var dn = b.CreateWeight(TestData.Bf16(inter * h, 2), inter, h, WeightLayout.InOut);
            AssertInvariant((s, c) =>
            {
                var y = new float[c * h];
                b.SwiGluFfn(x.AsSpan(s * h, c * h), c, gu, dn, y);
                return y;
            }, Total, h, $"{backend} SwiGluFfn H={h} I={inter}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfnGrouped_RowAloneEqualsRowInAnyGrouping(string backend)
    {
        var b = TestBackends.Get(backend);
        const int H = 32, I = 64, Total = 20;
        using var gu0 = b.CreateWeight(TestData.Bf16(H * 2 * I, 1), H, 2 * I, WeightLayout.InOut);
        using var dn0 = b.CreateWeight(TestData.Bf16(I * H, 2), I, H, WeightLayout.InOut);
        using var gu1 = b.CreateWeight(TestData.Bf16(H * 2 * I, 3), H, 2 * I, WeightLayout.InOut);
        using var dn1 = b.CreateWeight(TestData.Bf16(I * H, 4), I, H, WeightLayout.InOut);
        var x = TestData.Floats(Total * H, 5);
        // All rows through expert 1, split into groups in different ways, must give the same rows.
        var reference = new float[Total * H];
        b.SwiGluFfnGrouped(x, [0, Total], [gu0, gu1], [dn0, dn1], reference);
        foreach (int[] counts in new[] { new[] { 0, 1, 0, 19 }, new[] { 0, 8, 0, 12 }, new[] { 0, 19, 0, 1 } })
        {
            var y = new float[Total * H];
            b.SwiGluFfnGrouped(x, counts, [gu0, gu1, gu0, gu1], [dn0, dn1, dn0, dn1], y);
            TestData.AssertBitwiseEqual(reference, y, $"{backend} grouping [{string.Join(",", counts)}]");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Attention_RowAloneEqualsRowInAnyBatch(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (var p in new[] { new AttentionParams(8, 2, 64, 0.125f, 24), new AttentionParams(4, 1, 136, 0.09f, 0) })
        {
            AssertAttentionInvariant(b, p, backend);
        }
    }

    private static void AssertAttentionInvariant(IKernelBackend b, AttentionParams p, string backend)
    {
        const int Total = 70;
        int width = p.Heads * p.HeadDim;
        var q = TestData.Floats(Total * width, 1);
        var k = TestData.Floats(Total * p.KvHeads * p.HeadDim, 2);
        var v = TestData.Floats(Total * p.KvHeads * p.HeadDim, 3);
        var positions = Enumerable.Range(0, Total).ToArray();
        AssertInvariant((s, c) =>
        {
            var o = new float[c * width];
            b.Attention(q.AsSpan(s * width, c * width), c, positions.AsSpan(s, c), k, v, Total, 0, p, o);
            return o;
        }, Total, width, $"{backend} Attention D={p.HeadDim}");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Attention_PrefillRowEqualsDecodeWithCache(string backend)
    {
        // Decode step t sees exactly the keys 0..t of the cache: it must reproduce prefill row t bitwise.
        var b = TestBackends.Get(backend);
        var p = new AttentionParams(4, 4, 32, 0.17f, 0);
        const int T = 40;
        int width = p.Heads * p.HeadDim;
        var q = TestData.Floats(T * width, 4);
        var k = TestData.Floats(T * width, 5);
        var v = TestData.Floats(T * width, 6);
        var prefill = new float[T * width];
        b.Attention(q, T, Enumerable.Range(0, T).ToArray(), k, v, T, 0, p, prefill);
        foreach (int t in new[] { 0, 1, 17, 39 })
        {
            var o = new float[width];
            b.Attention(q.AsSpan(t * width, width), 1, [t], k.AsSpan(0, (t + 1) * width), v.AsSpan(0, (t + 1) * width), t + 1, 0, p, o);
            TestData.AssertBitwiseEqual(prefill.AsSpan(t * width, width), o, $"{backend} step {t}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void RmsNormAndSoftmax_RowAloneEqualsRowInAnyBatch(string backend)
    {
        var b = TestBackends.Get(backend);
        const int Total = 130, Cols = 517;
        var x = TestData.Floats(Total * Cols, 8, 4f);
        var w = TestData.Floats(Cols, 9);
        AssertInvariant((s, c) =>
        {
            var y = new float[c * Cols];
            b.RmsNorm(x.AsSpan(s * Cols, c * Cols), c, Cols, w, 1e-5f, y);
            return y;
        }, Total, Cols, $"{backend} RmsNorm");
        AssertInvariant((s, c) =>
        {
            var y = x.AsSpan(s * Cols, c * Cols).ToArray();
            b.SoftmaxStable(y, c, Cols);
            return y;
        }, Total, Cols, $"{backend} SoftmaxStable");
    }
}
