using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuSwiGluFfnTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    // (rows, H, I): I a multiple of 32 (fused gate/up pairing) and not (separate activation pass).
    private static readonly (int Rows, int H, int I)[] s_shapes = [(1, 64, 32), (3, 40, 24), (9, 96, 64), (17, 33, 70), (1, 128, 256)];

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfn_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 100;
        foreach (var (rows, h, inter) in s_shapes)
        {
            foreach (var layout in new[] { WeightLayout.InOut, WeightLayout.OutIn })
            {
                var x = TestData.Floats(rows * h, seed++);
                var gu = TestData.Bf16(h * 2 * inter, seed++, 0.3f);
                var dn = TestData.Bf16(inter * h, seed++, 0.3f);
                var expected = new float[rows * h];
                ReferenceKernels.SwiGluFfn(x, rows, gu, layout, dn, layout, h, inter, expected);
                using var wgu = b.CreateWeight(gu, h, 2 * inter, layout);
                using var wdn = b.CreateWeight(dn, inter, h, layout);
                var actual = new float[rows * h];
                b.SwiGluFfn(x, rows, wgu, wdn, actual);
                double rms = TestData.Rms(expected);
                TestData.AssertClose(expected, actual, i => (1e-5 * rms) + (1e-5 * Math.Abs(expected[i])),
                    $"{backend} SwiGluFfn rows={rows} H={h} I={inter} {layout}");
            }
        }
    }

    /// <summary>The FFN built from the public ops: <c>MatMul(x, gateUp)</c>, <c>SiluMul</c> per row, <c>MatMul(act, down)</c>.</summary>
    internal static float[] ComposedFfn(IKernelBackend b, float[] x, int rows, IWeightMatrix gateUp, IWeightMatrix down)
    {
        int h = gateUp.InFeatures;
        int inter = down.InFeatures;
        var hidden = new float[rows * 2 * inter];
        b.MatMul(x, rows, gateUp, hidden);
        var act = new float[rows * inter];
        for (int r = 0; r < rows; r++)
        {
            b.SiluMul(hidden.AsSpan(r * 2 * inter, inter), hidden.AsSpan((r * 2 * inter) + inter, inter), act.AsSpan(r * inter, inter));
        }
        var y = new float[rows * h];
        b.MatMul(act, rows, down, y);
        return y;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfn_EqualsMatMulThenSiluMulThenMatMulBitwise(string backend)
    {
        // The fused FFN must do exactly the arithmetic of the separate ops.
        var b = TestBackends.Get(backend);
        foreach (var (rows, h, inter) in s_shapes)
        {
            var x = TestData.Floats(rows * h, 5);
            using var wgu = b.CreateWeight(TestData.Bf16(h * 2 * inter, 6), h, 2 * inter, WeightLayout.InOut);
            using var wdn = b.CreateWeight(TestData.Bf16(inter * h, 7), inter, h, WeightLayout.InOut);
            var expected = ComposedFfn(b, x, rows, wgu, wdn);
            var actual = new float[rows * h];
            b.SwiGluFfn(x, rows, wgu, wdn, actual);
            TestData.AssertBitwiseEqual(expected, actual, $"{backend} rows={rows} H={h} I={inter}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfnGrouped_EachRowEqualsSwiGluFfnAloneBitwise(string backend)
    {
        var b = TestBackends.Get(backend);
        const int H = 48, I = 64, Experts = 4;
        var gateUps = new List<IWeightMatrix>();
        var downs = new List<IWeightMatrix>();
        try
        {
            for (int e = 0; e < Experts; e++)
            {
                gateUps.Add(b.CreateWeight(TestData.Bf16(H * 2 * I, 10 + e), H, 2 * I, WeightLayout.InOut));
                downs.Add(b.CreateWeight(TestData.Bf16(I * H, 20 + e), I, H, WeightLayout.InOut));
            }
            int[] counts = [3, 0, 9, 1];
            int rows = counts.Sum();
            var x = TestData.Floats(rows * H, 30);
            var y = new float[rows * H];
            b.SwiGluFfnGrouped(x, counts, gateUps, downs, y);
            int row = 0;
            for (int g = 0; g < Experts; g++)
            {
                for (int i = 0; i < counts[g]; i++, row++)
                {
                    var alone = new float[H];
                    b.SwiGluFfn(x.AsSpan(row * H, H), 1, gateUps[g], downs[g], alone);
                    TestData.AssertBitwiseEqual(alone, y.AsSpan(row * H, H), $"{backend} group {g} row {row}");
                }
            }
        }
        finally
        {
            gateUps.ForEach(w => w.Dispose());
            downs.ForEach(w => w.Dispose());
        }
    }

    [Fact]
    public void SwiGluFfnGrouped_NoGroups_DoesNothing()
    {
        TestBackends.Default.SwiGluFfnGrouped([], [], [], [], []);
    }

    [Fact]
    public void SwiGluFfn_MoreRowsThanOneBlock_MatchesRowsAloneBitwise()
    {
        // 300 rows cross the 256-row FFN block: the block split must not change any row.
        var b = TestBackends.Default;
        const int H = 32, I = 32, Rows = 300;
        using var wgu = b.CreateWeight(TestData.Bf16(H * 2 * I, 1), H, 2 * I, WeightLayout.InOut);
        using var wdn = b.CreateWeight(TestData.Bf16(I * H, 2), I, H, WeightLayout.InOut);
        var x = TestData.Floats(Rows * H, 3);
        var y = new float[Rows * H];
        b.SwiGluFfn(x, Rows, wgu, wdn, y);
        foreach (int r in new[] { 0, 255, 256, 299 })
        {
            var alone = new float[H];
            b.SwiGluFfn(x.AsSpan(r * H, H), 1, wgu, wdn, alone);
            TestData.AssertBitwiseEqual(alone, y.AsSpan(r * H, H), $"row {r}");
        }
    }
}
