using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

/// <summary>
/// The ops of the Llama 4 vision encoder on every CPU configuration against the double-precision reference, plus the
/// batch invariance they must keep (a row's result never depends on the rows or blocks around it).
/// </summary>
[Trait("Category", "Unit")]
public sealed class CpuVisionOpsTests
{
    private const double Ulp = 1.0 / (1 << 23);

    public static TheoryData<string> Backends => TestBackends.Names;

    [Theory]
    [InlineData(0.0, 0.0)]
    [InlineData(0.5, 0.5204998778130465)]
    [InlineData(1.0, 0.8427007929497149)]
    [InlineData(2.0, 0.9953222650189527)]
    [InlineData(3.5, 0.9999992569016276)]
    [InlineData(-1.0, -0.8427007929497149)]
    public void ReferenceErf_MatchesTabulatedValues(double z, double expected) =>
        Assert.Equal(expected, ReferenceKernels.Erf(z), 1e-14);

    [Theory]
    [InlineData(3.0, 2.209049699858544e-05)]
    [InlineData(4.0, 1.541725790028002e-08)]
    [InlineData(6.0, 2.151973671249892e-17)]
    public void ReferenceErfc_HasRelativePrecisionInTheTail(double z, double expected) =>
        Assert.Equal(1.0, ReferenceKernels.Erfc(z) / expected, 1e-12);

    [Theory]
    [MemberData(nameof(Backends))]
    public void Gelu_Lengths0To256_MatchesExactErfReference(string backend)
    {
        var b = TestBackends.Get(backend);
        for (int n = 0; n <= 256; n++)
        {
            var x = TestData.Floats(n, n, 8f);
            var expected = new float[n];
            ReferenceKernels.Gelu(x, expected);
            var actual = new float[n];
            b.Gelu(x, actual);
            // A&S 7.1.26 bounds |erf error| by 1.5e-7, so |gelu error| ≤ |x| · 7.5e-8 plus fp32 rounding.
            TestData.AssertClose(expected, actual, i => (1e-7 * Math.Abs(x[i])) + (8 * Ulp * Math.Abs(expected[i])) + 1e-30, $"{backend} Gelu n={n}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Gelu_SpecialValuesAndTails_FollowTheExactForm(string backend)
    {
        var b = TestBackends.Get(backend);
        float[] x = [0f, -0f, 1f, -1f, 10f, -10f, 40f, -40f, float.NaN];
        var y = new float[x.Length];
        b.Gelu(x, y);
        Assert.Equal(0f, y[0]);
        Assert.Equal(0f, y[1]);
        Assert.Equal(0.8413447460685429, y[2], 1e-6);
        Assert.Equal(-0.15865525393145707, y[3], 1e-6);
        Assert.Equal(10f, y[4]);
        Assert.True(y[5] <= 0f && y[5] > -1e-20f, $"gelu(-10) = {y[5]}");
        Assert.Equal(40f, y[6]);
        Assert.True(y[7] <= 0f && y[7] > -1e-30f, $"gelu(-40) = {y[7]}");
        Assert.True(float.IsNaN(y[8]));
        // tanh-approximated GELU differs from the exact form by ~1e-3 around |x| ≈ 2: the kernel must not be that.
        var at2 = new float[1];
        b.Gelu([-2f], at2);
        Assert.Equal(ReferenceKernels.Gelu(-2.0), at2[0], 1e-6);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void LayerNorm_OddWidths_MatchesReference_AndIsRowIndependent(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (int cols in new[] { 1, 7, 16, 48, 100, 1408 })
        {
            const int rows = 9;
            // Rows with a large common offset: the two-pass variance must not cancel.
            var x = TestData.Floats(rows * cols, cols, 3f).Select((v, i) => v + (i / cols * 50f)).ToArray();
            var w = TestData.Floats(cols, cols + 1, 1f);
            var bias = TestData.Floats(cols, cols + 2, 0.5f);
            var expected = new float[x.Length];
            ReferenceKernels.LayerNorm(x, rows, cols, w, bias, 1e-5f, expected);
            var actual = new float[x.Length];
            b.LayerNorm(x, rows, cols, w, bias, 1e-5f, actual);
            TestData.AssertClose(expected, actual, _ => 2e-5 * (1 + TestData.MaxAbs(expected)), $"{backend} LayerNorm cols={cols}");

            var single = new float[cols];
            b.LayerNorm(x.AsSpan(4 * cols, cols), 1, cols, w, bias, 1e-5f, single);
            TestData.AssertBitwiseEqual(actual.AsSpan(4 * cols, cols), single, $"{backend} LayerNorm row 4 alone, cols={cols}");

            b.LayerNorm(x, rows, cols, w, bias, 1e-5f, x);
            TestData.AssertBitwiseEqual(actual, x, $"{backend} LayerNorm in place, cols={cols}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void AddBias_IsExactFloatAdditionPerRow(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (int cols in new[] { 1, 5, 16, 17, 80 })
        {
            var x = TestData.Floats(6 * cols, cols, 2f);
            var bias = TestData.Floats(cols, cols + 3, 1f);
            var expected = x.Select((v, i) => v + bias[i % cols]).ToArray();
            b.AddBias(x, 6, bias);
            TestData.AssertBitwiseEqual(expected, x, $"{backend} AddBias cols={cols}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void RotatePairs_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        const int rows = 17;
        const int heads = 3;
        const int headDim = 12;
        var x = TestData.Floats(rows * heads * headDim, 5, 2f);
        var cosSin = new float[rows * headDim];
        for (int i = 0; i < rows * headDim / 2; i++)
        {
            double theta = i * 0.37;
            cosSin[2 * i] = (float)Math.Cos(theta);
            cosSin[(2 * i) + 1] = (float)Math.Sin(theta);
        }
        var expected = (float[])x.Clone();
        ReferenceKernels.RotatePairs(expected, rows, heads, headDim, cosSin);
        b.RotatePairs(x, rows, heads, headDim, cosSin);
        TestData.AssertBitwiseEqual(expected, x, $"{backend} RotatePairs");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void BidirectionalAttention_MatchesReference_AndBlocksAreIndependent(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (var (tokens, heads, headDim) in new[] { (17, 4, 12), (5, 2, 16), (1, 1, 8), (70, 3, 8) })
        {
            const int sequences = 3;
            int n = sequences * tokens * heads * headDim;
            var q = TestData.Floats(n, tokens, 2f);
            var k = TestData.Floats(n, tokens + 1, 2f);
            var v = TestData.Floats(n, tokens + 2, 2f);
            float scale = 1f / MathF.Sqrt(headDim);
            var expected = new float[n];
            ReferenceKernels.BidirectionalAttention(q, k, v, sequences, tokens, heads, headDim, scale, expected);
            var actual = new float[n];
            b.BidirectionalAttention(q, k, v, sequences, tokens, heads, headDim, scale, actual);
            TestData.AssertClose(expected, actual, _ => 1e-5 * (1 + TestData.MaxAbs(expected)), $"{backend} bidirectional t={tokens}");

            // The first query sees the last key of its block (no causal mask) and nothing of the next block.
            int block = tokens * heads * headDim;
            var alone = new float[block];
            b.BidirectionalAttention(q.AsSpan(block, block), k.AsSpan(block, block), v.AsSpan(block, block), 1, tokens, heads, headDim, scale, alone);
            TestData.AssertBitwiseEqual(actual.AsSpan(block, block), alone, $"{backend} block 1 alone, t={tokens}");
        }
    }

    [Fact]
    public void VisionOps_RejectWrongShapes()
    {
        var b = TestBackends.Default;
        Assert.Throws<ArgumentException>(() => b.LayerNorm(new float[6], 2, 3, new float[3], new float[2], 1e-5f, new float[6]));
        Assert.Throws<ArgumentException>(() => b.LayerNorm(new float[6], 2, 3, new float[3], new float[3], float.NaN, new float[6]));
        Assert.Throws<ArgumentException>(() => b.Gelu(new float[3], new float[4]));
        Assert.Throws<ArgumentException>(() => b.AddBias(new float[7], 2, new float[3]));
        Assert.Throws<ArgumentException>(() => b.RotatePairs(new float[12], 1, 1, 12, new float[11]));
        Assert.Throws<ArgumentException>(() => b.RotatePairs(new float[9], 1, 1, 9, new float[9]));
        Assert.Throws<ArgumentException>(() => b.BidirectionalAttention(new float[8], new float[8], new float[7], 1, 2, 1, 4, 0.5f, new float[8]));
        Assert.Throws<ArgumentException>(() => b.BidirectionalAttention(new float[8], new float[8], new float[8], 1, 0, 1, 4, 0.5f, new float[8]));
    }
}
