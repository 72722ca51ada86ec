using System.Runtime.Intrinsics;
using Distributed.Kernels.Cpu;

namespace Distributed.Kernels.Tests.Cpu;

/// <summary>
/// FP8 E4M3 weights on the CPU backend. The kernels promise one exact arithmetic, so they are compared BITWISE with a
/// scalar transcription of it: per output element one fp32 FMA chain over k = 0..K−1 of x times the E4M3 value, then
/// times the column's scale (and, W8A8, the input row quantized per token first and its scale last). Every SIMD level
/// (forced through the backend's test hook, so the AVX2 path runs on AVX-512 machines too), thread count, shape class
/// (partial panels, the four-panel T=1 kernel, k-blocking past 256, row blocks of 8/6/4/1), layout and code mix
/// (uniform over all 254 finite codes: nearly every line holds a zero or subnormal and takes the exact decode; or
/// realistic, nearly all normal: the fast decode) must give exactly that.
/// </summary>
[Trait("Category", "Unit")]
public sealed class CpuFp8MatMulTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    private static readonly (int Rows, int K, int N)[] Shapes =
    [
        (1, 1, 1), (1, 7, 5), (1, 64, 128), (1, 33, 160), (1, 300, 257), (2, 17, 31), (3, 5, 33), (4, 40, 64), (5, 96, 96),
        (6, 65, 97), (7, 129, 48), (8, 31, 32), (9, 260, 70), (13, 300, 100), (17, 128, 200), (40, 520, 64), (130, 280, 40),
    ];

    /// <summary>Random finite E4M3 codes: uniform over all 254, or realistic (about 1 in 400 with exponent bits 0).</summary>
    internal static byte[] Codes(int n, int seed, bool uniform)
    {
        var rng = new Random(seed);
        var codes = new byte[n];
        for (int i = 0; i < n; i++)
        {
            byte c;
            do
            {
                c = uniform || rng.Next(400) == 0 ? (byte)rng.Next(256) : (byte)((rng.Next(2) << 7) | (rng.Next(1, 15) << 3) | rng.Next(8));
            }
            while (Fp8E4M3.IsNaN(c));
            codes[i] = c;
        }
        return codes;
    }

    internal static float[] Scales(int n, int seed)
    {
        var rng = new Random(seed);
        var s = new float[n];
        for (int i = 0; i < n; i++)
        {
            s[i] = (float)Math.ScaleB(1 + rng.NextDouble(), rng.Next(-12, -2));
        }
        return s;
    }

    /// <summary>The exact arithmetic every path must reproduce.</summary>
    internal static float[] Reference(float[] x, int rows, byte[] codes, float[] scales, int k, int n, WeightLayout layout, Fp8ActivationMode mode)
    {
        var y = new float[rows * n];
        var q = new float[k];
        for (int r = 0; r < rows; r++)
        {
            float[] xr = x[(r * k)..((r + 1) * k)];
            float sx = 1f;
            if (mode == Fp8ActivationMode.PerTokenFp8)
            {
                sx = Fp8E4M3.QuantizeRowToValues(xr, q);
                xr = q;
            }
            for (int c = 0; c < n; c++)
            {
                float acc = 0f;
                for (int kk = 0; kk < k; kk++)
                {
                    byte code = layout == WeightLayout.OutIn ? codes[(c * k) + kk] : codes[(kk * n) + c];
                    acc = MathF.FusedMultiplyAdd(xr[kk], Fp8E4M3.ToFloat(code), acc);
                }
                float v = acc * scales[c];
                y[(r * n) + c] = mode == Fp8ActivationMode.PerTokenFp8 ? v * sx : v;
            }
        }
        return y;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_EveryShapeLayoutModeAndCodeMix_BitwiseEqualsTheFmaChain(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 100;
        foreach (var (rows, k, n) in Shapes)
        {
            foreach (var layout in new[] { WeightLayout.OutIn, WeightLayout.InOut })
            {
                foreach (var mode in new[] { Fp8ActivationMode.WeightOnly, Fp8ActivationMode.PerTokenFp8 })
                {
                    bool uniform = seed % 2 == 0;
                    var codes = Codes(k * n, seed++, uniform);
                    var scales = Scales(n, seed++);
                    var x = TestData.Floats(rows * k, seed++, 3f);
                    using var w = b.CreateFp8Weight(codes, scales, k, n, layout, mode);
                    var y = new float[rows * n];
                    b.MatMul(x, rows, w, y);
                    TestData.AssertBitwiseEqual(Reference(x, rows, codes, scales, k, n, layout, mode), y,
                        $"{backend} FP8 MatMul {rows}x{k}x{n} {layout} {mode} {(uniform ? "uniform codes" : "realistic codes")}");
                }
            }
        }
    }

    [Fact]
    public void MatMul_SimdLevelsAndThreadCounts_AgreeBitwiseOnALargeMatrix()
    {
        // Large enough for the team's chunking (rows × K × N ≥ 2^18), the T=1 four-panel kernel and k blocking.
        const int Rows = 37, K = 700, N = 300;
        var codes = Codes(K * N, 7, uniform: false);
        var scales = Scales(N, 8);
        var x = TestData.Floats(Rows * K, 9);
        var expected = Reference(x, Rows, codes, scales, K, N, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
        foreach (string name in TestBackends.AllNames)
        {
            var b = TestBackends.Get(name);
            using var w = b.CreateFp8Weight(codes, scales, K, N, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
            var y = new float[Rows * N];
            b.MatMul(x, Rows, w, y);
            TestData.AssertBitwiseEqual(expected, y, $"{name} {Rows}x{K}x{N}");
            var one = new float[N];
            b.MatMul(x.AsSpan(5 * K, K), 1, w, one);
            TestData.AssertBitwiseEqual(expected.AsSpan(5 * N, N), one, $"{name}: row 5 alone vs in the batch");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SwiGluFfn_Fp8_EqualsItsMatMulSiluMulMatMulComposition(string backend)
    {
        var b = TestBackends.Get(backend);
        const int H = 96, I = 64;
        foreach (var mode in new[] { Fp8ActivationMode.WeightOnly, Fp8ActivationMode.PerTokenFp8 })
        {
            foreach (int rows in new[] { 1, 3, 11, 40 })
            {
                var guCodes = Codes(2 * I * H, 11 + rows, uniform: false);
                var dnCodes = Codes(H * I, 12 + rows, uniform: true);
                using var gu = b.CreateFp8Weight(guCodes, Scales(2 * I, 13), H, 2 * I, WeightLayout.OutIn, mode);
                using var dn = b.CreateFp8Weight(dnCodes, Scales(H, 14), I, H, WeightLayout.OutIn, mode);
                var x = TestData.Floats(rows * H, 15 + rows, 2f);
                var h = new float[rows * 2 * I];
                b.MatMul(x, rows, gu, h);
                var act = new float[rows * I];
                for (int r = 0; r < rows; r++)
                {
                    b.SiluMul(h.AsSpan(r * 2 * I, I), h.AsSpan((r * 2 * I) + I, I), act.AsSpan(r * I, I));
                }
                var expected = new float[rows * H];
                b.MatMul(act, rows, dn, expected);
                var y = new float[rows * H];
                b.SwiGluFfn(x, rows, gu, dn, y);
                TestData.AssertBitwiseEqual(expected, y, $"{backend} FP8 SwiGluFfn {mode} rows {rows}");
            }
        }
    }

    [Fact]
    public void SwiGluFfnGrouped_MixedBf16AndFp8Experts_EachRowAsAlone()
    {
        var b = TestBackends.Default;
        const int H = 64, I = 32;
        var experts = new List<(IWeightMatrix GateUp, IWeightMatrix Down)>();
        try
        {
            experts.Add((b.CreateWeight(TestData.Bf16(H * 2 * I, 1), H, 2 * I, WeightLayout.InOut), b.CreateWeight(TestData.Bf16(I * H, 2), I, H, WeightLayout.InOut)));
            experts.Add((b.CreateFp8Weight(Codes(2 * I * H, 3, false), Scales(2 * I, 4), H, 2 * I, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly),
                b.CreateFp8Weight(Codes(H * I, 5, false), Scales(H, 6), I, H, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly)));
            experts.Add((b.CreateFp8Weight(Codes(2 * I * H, 7, true), Scales(2 * I, 8), H, 2 * I, WeightLayout.OutIn, Fp8ActivationMode.PerTokenFp8),
                b.CreateFp8Weight(Codes(H * I, 9, true), Scales(H, 10), I, H, WeightLayout.OutIn, Fp8ActivationMode.PerTokenFp8)));
            int[] counts = [3, 4, 5];
            var x = TestData.Floats(12 * H, 11);
            var y = new float[12 * H];
            b.SwiGluFfnGrouped(x, counts, experts.Select(e => e.GateUp).ToList(), experts.Select(e => e.Down).ToList(), y);
            int row = 0;
            for (int g = 0; g < counts.Length; g++)
            {
                for (int i = 0; i < counts[g]; i++, row++)
                {
                    var alone = new float[H];
                    b.SwiGluFfn(x.AsSpan(row * H, H), 1, experts[g].GateUp, experts[g].Down, alone);
                    TestData.AssertBitwiseEqual(alone, y.AsSpan(row * H, H), $"group {g} row {i}");
                }
            }
        }
        finally
        {
            foreach (var (gu, dn) in experts)
            {
                gu.Dispose();
                dn.Dispose();
            }
        }
    }

    /// <summary>The in-register decode's subnormal tables are literal constants (see Fp8Decode): they must be the bf16 bits
    /// of the E4M3 subnormals m · 2^-9 that the exact table gives.</summary>
    [Fact]
    public void InRegisterDecode_SubnormalTables_MatchTheExactDecode()
    {
        var words = Fp8Decode.SubnormalWords;
        var bytes = Fp8Decode.SubnormalBytes.AsUInt16();
        for (int m = 0; m < 8; m++)
        {
            ushort expected = Fp8E4M3.ToBf16Bits((byte)m);
            Assert.Equal(expected, words[m]);
            Assert.Equal(expected, bytes[m]);
            Assert.Equal(expected, bytes[8 + m]);
        }
    }

    [Fact]
    public void ResidentBytes_AreAboutOneBytePerWeight()
    {
        const int K = 1024, N = 2048;
        using var w = TestBackends.Default.CreateFp8Weight(Codes(K * N, 1, false), Scales(N, 2), K, N, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
        // Codes + one flag byte per 32 codes (k line) + fp32 scales.
        Assert.InRange(w.ResidentBytes, (long)K * N, (long)(K * N * (1 + (1.0 / 32)) + (4 * N) + 4096));
    }

    [Theory]
    [InlineData(0, float.NaN, "scales[0]")]
    [InlineData(0, 0f, "scales[0]")]
    [InlineData(0, -1f, "scales[0]")]
    [InlineData(0, float.PositiveInfinity, "scales[0]")]
    [InlineData(0x7F, 1f, "NaN code 0x7F")]
    [InlineData(0xFF, 1f, "NaN code 0xFF")]
    public void CreateFp8Weight_BadScaleOrNaNCode_IsRefusedNamingIt(byte code, float scale, string expected)
    {
        var codes = Codes(4 * 3, 1, false);
        var scales = new float[] { 1f, 1f, 1f };
        if (code != 0)
        {
            codes[5] = code;
        }
        else
        {
            scales[0] = scale;
        }
        foreach (string name in TestBackends.AllNames)
        {
            var ex = Assert.Throws<ArgumentException>(() => TestBackends.Get(name).CreateFp8Weight(codes, scales, 4, 3, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
            Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void CreateFp8Weight_WrongLengthsOrMode_AreRefused()
    {
        var b = TestBackends.Default;
        Assert.Throws<ArgumentException>(() => b.CreateFp8Weight(new byte[11], new float[3], 4, 3, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
        Assert.Throws<ArgumentException>(() => b.CreateFp8Weight(new byte[12], new float[4], 4, 3, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
        Assert.Throws<ArgumentException>(() => b.CreateFp8Weight(new byte[12], [1f, 1f, 1f], 4, 3, WeightLayout.OutIn, (Fp8ActivationMode)7));
        Assert.Throws<ArgumentException>(() => b.CreateFp8Weight(new byte[12], [1f, 1f, 1f], 4, 3, (WeightLayout)9, Fp8ActivationMode.WeightOnly));
    }

    [Fact]
    public void Fp8Weight_FromAnotherSimdLevelsBackend_StillComputesExactly()
    {
        // A weight packed in the Vector512 byte order used by a Vector256 backend (and the reverse) falls back to the
        // exact table decode instead of misreading the bytes.
        const int Rows = 3, K = 50, N = 70;
        var codes = Codes(K * N, 21, uniform: true);
        var scales = Scales(N, 22);
        var x = TestData.Floats(Rows * K, 23);
        var expected = Reference(x, Rows, codes, scales, K, N, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
        var names = TestBackends.AllNames.ToList();
        foreach (string packer in names)
        {
            using var w = TestBackends.Get(packer).CreateFp8Weight(codes, scales, K, N, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
            foreach (string runner in names)
            {
                var y = new float[Rows * N];
                TestBackends.Get(runner).MatMul(x, Rows, w, y);
                TestData.AssertBitwiseEqual(expected, y, $"packed by {packer}, run by {runner}");
            }
        }
    }
}
