using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuElementwiseTests
{
    private const double Ulp = 1.0 / (1 << 23);

    public static TheoryData<string> Backends => TestBackends.Names;

    [Theory]
    [MemberData(nameof(Backends))]
    public void SiluMul_Lengths0To256_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        for (int n = 0; n <= 256; n++)
        {
            var g = TestData.Floats(n, n, 12f);
            var u = TestData.Floats(n, n + 1000, 3f);
            var expected = new float[n];
            ReferenceKernels.SiluMul(g, u, expected);
            var actual = new float[n];
            b.SiluMul(g, u, actual);
            TestData.AssertClose(expected, actual, i => (8 * Ulp * Math.Abs(expected[i])) + 1e-37, $"{backend} SiluMul n={n}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SiluMul_SpecialValues_FollowTheFormula(string backend)
    {
        var b = TestBackends.Get(backend);
        float[] g = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0f, -0f, 100f, -100f, 88.8f, -88.8f, 1f, 1f];
        float[] u = [1f, 2f, 1f, 5f, 5f, 1f, 1f, 1f, 1f, float.NaN, float.PositiveInfinity];
        var y = new float[g.Length];
        b.SiluMul(g, u, y);
        Assert.True(float.IsNaN(y[0]));
        Assert.Equal(float.PositiveInfinity, y[1]);
        Assert.True(y[2] == 0f || float.IsNaN(y[2]), $"silu(-inf) = {y[2]}"); // -inf / (1 + inf) is NaN in IEEE; 0 also acceptable
        Assert.Equal(0f, y[3]);
        Assert.Equal(0f, y[4]);
        Assert.Equal(100f, y[5]);
        Assert.True(Math.Abs(y[6]) < 1e-38 && float.IsFinite(y[6]));
        Assert.Equal(88.8f, y[7], 1e-4f);
        Assert.True(Math.Abs(y[8]) < 1e-36);
        Assert.True(float.IsNaN(y[9]));
        Assert.Equal(float.PositiveInfinity, y[10]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SiluMul_InPlaceOnGate_MatchesOutOfPlace(string backend)
    {
        var b = TestBackends.Get(backend);
        var g = TestData.Floats(77, 1, 5f);
        var u = TestData.Floats(77, 2);
        var expected = new float[77];
        b.SiluMul(g, u, expected);
        b.SiluMul(g, u, g);
        TestData.AssertBitwiseEqual(expected, g, "in place");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Add_Lengths0To256_IsExactFloatAddition(string backend)
    {
        var b = TestBackends.Get(backend);
        for (int n = 0; n <= 256; n++)
        {
            var d = TestData.Floats(n, n);
            var s = TestData.Floats(n, n + 7);
            var expected = d.Zip(s, (x, y) => x + y).ToArray();
            b.Add(d, s);
            TestData.AssertBitwiseEqual(expected, d, $"{backend} Add n={n}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void RmsNorm_Lengths1To256WithAndWithoutWeight_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        for (int n = 1; n <= 256; n++)
        {
            const int Rows = 3;
            var x = TestData.Floats(Rows * n, n, 3f);
            var w = TestData.Floats(n, n + 1);
            foreach (var weight in new[] { w, [] })
            {
                var expected = new float[Rows * n];
                ReferenceKernels.RmsNorm(x, Rows, n, weight, 1e-5f, expected);
                var actual = new float[Rows * n];
                b.RmsNorm(x, Rows, n, weight, 1e-5f, actual);
                TestData.AssertClose(expected, actual, i => ((n + 8) * Ulp * Math.Abs(expected[i])) + 1e-30,
                    $"{backend} RmsNorm n={n} weight={weight.Length}");
            }
        }
    }

    [Fact]
    public void RmsNorm_EpsIsInsideTheSquareRoot()
    {
        // x = 0.001 everywhere: mean(x²) = 1e-6, so with eps = 1e-5 the scale is 1/sqrt(1.1e-5), not 1/(1e-3 + eps).
        var b = TestBackends.Default;
        var x = Enumerable.Repeat(0.001f, 64).ToArray();
        var y = new float[64];
        b.RmsNorm(x, 1, 64, [], 1e-5f, y);
        double expected = 0.001 / Math.Sqrt(1e-6 + 1e-5);
        Assert.All(y, v => Assert.Equal(expected, v, 1e-6));
    }

    [Fact]
    public void RmsNorm_InPlace_MatchesOutOfPlace()
    {
        var b = TestBackends.Default;
        var x = TestData.Floats(4 * 100, 3);
        var w = TestData.Floats(100, 4);
        var expected = new float[x.Length];
        b.RmsNorm(x, 4, 100, w, 1e-6f, expected);
        b.RmsNorm(x, 4, 100, w, 1e-6f, x);
        TestData.AssertBitwiseEqual(expected, x, "in place");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SoftmaxStable_Lengths1To256_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        for (int n = 1; n <= 256; n++)
        {
            var x = TestData.Floats(2 * n, n, 20f);
            var expected = x.ToArray();
            ReferenceKernels.SoftmaxStable(expected, 2, n);
            b.SoftmaxStable(x, 2, n);
            TestData.AssertClose(expected, x, i => ((n + 16) * Ulp * Math.Abs(expected[i])) + 1e-37, $"{backend} Softmax n={n}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SoftmaxStable_LogitsOfPlusMinus1000_StayFiniteAndSumToOne(string backend)
    {
        var b = TestBackends.Get(backend);
        float[] x = [1000f, 999f, -1000f, 1000f, 0f, -999f, 998.5f];
        var expected = x.ToArray();
        ReferenceKernels.SoftmaxStable(expected, 1, x.Length);
        b.SoftmaxStable(x, 1, x.Length);
        Assert.All(x, v => Assert.True(float.IsFinite(v)));
        Assert.Equal(1.0, x.Sum(v => (double)v), 1e-6);
        TestData.AssertClose(expected, x, i => (24 * Ulp * Math.Abs(expected[i])) + 1e-37, "±1000");
        Assert.Equal(0f, x[2]);
    }

    [Fact]
    public void SoftmaxStable_NaNOrInfinity_GivesNaNRowOnly()
    {
        var b = TestBackends.Default;
        float[] x = [1f, float.NaN, 2f, 1f, 2f, 3f, float.PositiveInfinity, 0f, 1f];
        b.SoftmaxStable(x, 3, 3);
        Assert.All(x.AsSpan(0, 3).ToArray(), v => Assert.True(float.IsNaN(v)));
        Assert.Equal(1.0, x[3] + x[4] + (double)x[5], 1e-6);
        Assert.True(float.IsNaN(x[6]));
        foreach (var name in TestBackends.AllNames)
        {
            var wide = TestData.Floats(40, 9);
            wide[20] = float.NaN;
            TestBackends.Get(name).SoftmaxStable(wide, 1, 40);
            Assert.All(wide, v => Assert.True(float.IsNaN(v)));
        }
    }
}
