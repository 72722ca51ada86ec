using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuMatMulTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    /// <summary>rows, K, N: odd K, N below / across / at multiples of the 32-column panel, rows around the 8-row kernel.</summary>
    public static readonly (int Rows, int K, int N)[] Shapes =
    [
        (1, 1, 1), (1, 7, 5), (1, 64, 128), (1, 33, 160), (1, 100, 130), (2, 17, 31), (3, 5, 33), (7, 40, 64),
        (8, 96, 96), (9, 65, 97), (16, 31, 32), (17, 128, 200), (64, 48, 70), (130, 20, 40),
    ];

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_BothLayoutsOddShapes_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 1;
        foreach (var (rows, k, n) in Shapes)
        {
            foreach (var layout in new[] { WeightLayout.OutIn, WeightLayout.InOut })
            {
                var x = TestData.Floats(rows * k, seed++);
                var bits = TestData.Bf16(k * n, seed++);
                var expected = new float[rows * n];
                var scale = new double[rows * n];
                ReferenceKernels.MatMul(x, rows, bits, k, n, layout, expected);
                ReferenceKernels.MatMulAbs(x, rows, bits, k, n, layout, scale);
                using var w = b.CreateWeight(bits, k, n, layout);
                Assert.Equal(k, w.InFeatures);
                Assert.Equal(n, w.OutFeatures);
                var actual = new float[rows * n];
                b.MatMul(x, rows, w, actual);
                // Rigorous bound for a length-K fp32 accumulation: |err| ≤ (K + 2)·2⁻²⁴·Σ|x·w|.
                TestData.AssertClose(expected, actual, i => (k + 2) * Math.ScaleB(1, -24) * scale[i] + 1e-30,
                    $"{backend} MatMul {rows}x{k}x{n} {layout}");
            }
        }
    }

    [Fact]
    public void MatMul_LayoutsOfTheSameMatrix_GiveBitwiseEqualResults()
    {
        var b = TestBackends.Default;
        const int Rows = 5, K = 70, N = 45;
        var outIn = TestData.Bf16(K * N, 42);
        var inOut = new ushort[K * N];
        for (int n = 0; n < N; n++)
        {
            for (int k = 0; k < K; k++)
            {
                inOut[(k * N) + n] = outIn[(n * K) + k];
            }
        }
        using var w1 = b.CreateWeight(outIn, K, N, WeightLayout.OutIn);
        using var w2 = b.CreateWeight(inOut, K, N, WeightLayout.InOut);
        var x = TestData.Floats(Rows * K, 43);
        var y1 = new float[Rows * N];
        var y2 = new float[Rows * N];
        b.MatMul(x, Rows, w1, y1);
        b.MatMul(x, Rows, w2, y2);
        TestData.AssertBitwiseEqual(y1, y2, "OutIn vs InOut");
    }

    [Fact]
    public void MatMul_SingleNonZeroWeight_SelectsThatColumn()
    {
        // W[k=3, n=37] = 1.5 only: y[r, 37] = 1.5·x[r, 3], every other output exactly 0 (catches panel/half mix-ups).
        var b = TestBackends.Default;
        const int K = 9, N = 40;
        var bits = new ushort[K * N];
        bits[(3 * N) + 37] = DTypeInfo.FloatToBf16(1.5f);
        using var w = b.CreateWeight(bits, K, N, WeightLayout.InOut);
        var x = TestData.Floats(2 * K, 5);
        var y = new float[2 * N];
        b.MatMul(x, 2, w, y);
        for (int r = 0; r < 2; r++)
        {
            for (int n = 0; n < N; n++)
            {
                Assert.Equal(n == 37 ? 1.5f * x[(r * K) + 3] : 0f, y[(r * N) + n]);
            }
        }
    }

    [Fact]
    public void MatMul_LargeShapeMultiThreaded_MatchesSingleThreadedBitwise()
    {
        const int K = 512, N = 1000;
        var bits = TestData.Bf16(K * N, 77);
        var x = TestData.Floats(37 * K, 78);
        float[]? first = null;
        foreach (var name in TestBackends.AllNames.Where(n => n.StartsWith(TestBackends.Default.Simd.ToString(), StringComparison.Ordinal)))
        {
            var b = TestBackends.Get(name);
            using var w = b.CreateWeight(bits, K, N, WeightLayout.OutIn);
            foreach (int rows in new[] { 1, 37 })
            {
                var y = new float[rows * N];
                b.MatMul(x.AsSpan(0, rows * K), rows, w, y);
                if (rows == 37)
                {
                    if (first is null)
                    {
                        first = y;
                    }
                    else
                    {
                        TestData.AssertBitwiseEqual(first, y, $"{name} vs first backend");
                    }
                }
            }
        }
        Assert.NotNull(first);
    }

    [Fact]
    public void MatMul_SpecialValues_PropagateLikeIeee()
    {
        var b = TestBackends.Default;
        const int K = 4, N = 3;
        var bits = new ushort[K * N];
        for (int i = 0; i < bits.Length; i++)
        {
            bits[i] = DTypeInfo.FloatToBf16(1f);
        }
        using var w = b.CreateWeight(bits, K, N, WeightLayout.InOut);
        float[] x = [1f, float.NaN, 0f, 0f, float.PositiveInfinity, 1f, 0f, 0f, float.PositiveInfinity, float.NegativeInfinity, 0f, 0f];
        var y = new float[3 * N];
        b.MatMul(x, 3, w, y);
        Assert.All(y.AsSpan(0, N).ToArray(), v => Assert.True(float.IsNaN(v)));
        Assert.All(y.AsSpan(N, N).ToArray(), v => Assert.Equal(float.PositiveInfinity, v));
        Assert.All(y.AsSpan(2 * N, N).ToArray(), v => Assert.True(float.IsNaN(v)));
    }

    [Fact]
    public void MatMul_ZeroRows_DoesNothing()
    {
        var b = TestBackends.Default;
        using var w = b.CreateWeight(TestData.Bf16(8 * 8, 1), 8, 8, WeightLayout.OutIn);
        b.MatMul([], 0, w, []);
    }

    [Fact]
    public void CreateWeight_ResidentBytes_CountsPaddedPanels()
    {
        var b = TestBackends.Default;
        using var w = b.CreateWeight(TestData.Bf16(10 * 33, 1), 10, 33, WeightLayout.OutIn);
        Assert.Equal(2L * 10 * 64, w.ResidentBytes);
    }
}
