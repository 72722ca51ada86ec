using Distributed.Kernels.Cpu;
using Distributed.Tests.Shared;
using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

/// <summary>
/// <see cref="CpuMatMulPrecision.Bf16"/>: the emitted VDPBF16PS microkernels against a reference that rounds the input
/// to bf16 and sums in double, the pair packing of both weight layouts, the rounding itself, and batch invariance.
/// </summary>
[Trait("Category", "Unit")]
public sealed class CpuBf16MatMulTests
{
    private static readonly Lazy<CpuKernelBackend> s_two = new(() => new CpuKernelBackend(2, CpuMatMulPrecision.Bf16));
    private static readonly Lazy<CpuKernelBackend> s_one = new(() => new CpuKernelBackend(1, CpuMatMulPrecision.Bf16));

    private static float[] RoundedToBf16(float[] x) =>
        [.. x.Select(v => BitConverter.UInt32BitsToSingle(Bf16DotKernels.RoundToBf16(BitConverter.SingleToUInt32Bits(v)) << 16))];

    [Bf16Fact]
    public void MatMul_BothLayoutsOddShapes_MatchesReferenceOnBf16Inputs()
    {
        // The CpuMatMulTests shapes plus ones that cross the 128-pair k block with several row blocks, and a Maverick-like width.
        var shapes = CpuMatMulTests.Shapes.Concat([(20, 601, 100), (33, 1024, 64), (9, 2048, 96), (1, 5120, 64)]);
        int seed = 1;
        foreach (var b in new[] { s_two.Value, s_one.Value })
        {
            foreach (var (rows, k, n) in shapes)
            {
                foreach (var layout in new[] { WeightLayout.OutIn, WeightLayout.InOut })
                {
                    var x = TestData.Floats(rows * k, seed++);
                    var bits = TestData.Bf16(k * n, seed++);
                    var xr = RoundedToBf16(x);
                    var expected = new float[rows * n];
                    var scale = new double[rows * n];
                    ReferenceKernels.MatMul(xr, rows, bits, k, n, layout, expected);
                    ReferenceKernels.MatMulAbs(xr, rows, bits, k, n, layout, scale);
                    using var w = b.CreateWeight(bits, k, n, layout);
                    var actual = new float[rows * n];
                    b.MatMul(x, rows, w, actual);
                    // bf16 × bf16 products are exact in fp32, so only the K-term fp32 accumulation rounds.
                    TestData.AssertClose(expected, actual, i => (k + 2) * Math.ScaleB(1, -24) * scale[i] + 1e-30,
                        $"{b.Name} MatMul {rows}x{k}x{n} {layout}");
                }
            }
        }
    }

    [Bf16Fact]
    public void MatMul_SingleNonZeroWeight_SelectsThatColumnAndRow()
    {
        // W[k=3, n=37] = 1.5 only (odd k: the high half of a pair, in the second half of the last panel).
        var b = s_two.Value;
        const int K = 9, N = 40;
        var bits = new ushort[K * N];
        bits[(3 * N) + 37] = DTypeInfo.FloatToBf16(1.5f);
        foreach (var layout in new[] { WeightLayout.InOut, WeightLayout.OutIn })
        {
            var src = layout == WeightLayout.InOut ? bits : Transpose(bits, K, N);
            using var w = b.CreateWeight(src, K, N, layout);
            var x = new float[2 * K];
            x[3] = 2f;
            x[K + 3] = -0.25f;
            var y = new float[2 * N];
            b.MatMul(x, 2, w, y);
            for (int i = 0; i < y.Length; i++)
            {
                float expected = i == 37 ? 3f : i == N + 37 ? -0.375f : 0f;
                Assert.True(y[i] == expected, $"{layout}: y[{i}] = {y[i]}, expected {expected}");
            }
        }
    }

    [Bf16Fact]
    public void MatMul_RowAloneEqualsRowInAnyBatchAndAnyThreadCount()
    {
        const int Total = 40, K = 600, N = 200;
        var x = TestData.Floats(Total * K, 7);
        var bits = TestData.Bf16(K * N, 8);
        using var w2 = s_two.Value.CreateWeight(bits, K, N, WeightLayout.InOut);
        using var w1 = s_one.Value.CreateWeight(bits, K, N, WeightLayout.InOut);
        var all = new float[Total * N];
        s_two.Value.MatMul(x, Total, w2, all);
        var allOne = new float[Total * N];
        s_one.Value.MatMul(x, Total, w1, allOne);
        TestData.AssertBitwiseEqual(all, allOne, "2 threads vs 1");
        foreach (int batch in new[] { 1, 3, 8, 9, 17 })
        {
            for (int start = 0; start + batch <= Total; start += 11)
            {
                var y = new float[batch * N];
                s_two.Value.MatMul(x.AsSpan(start * K, batch * K), batch, w2, y);
                TestData.AssertBitwiseEqual(all.AsSpan(start * N, batch * N), y, $"rows {start}..{start + batch} in a batch of {batch}");
            }
        }
    }

    [Bf16Fact]
    public void SwiGluFfn_MatchesMatMulComposition_AndGroupedEqualsSingle()
    {
        // The FFN rounds x for gate/up and the fp32 activation for down: the same as composing the public ops.
        var b = s_two.Value;
        const int Rows = 19, H = 96, I = 128;
        var x = TestData.Floats(Rows * H, 3);
        using var gu = b.CreateWeight(TestData.Bf16(H * 2 * I, 4), H, 2 * I, WeightLayout.InOut);
        using var dn = b.CreateWeight(TestData.Bf16(I * H, 5), I, H, WeightLayout.InOut);
        var expected = CpuSwiGluFfnTests.ComposedFfn(b, x, Rows, gu, dn);
        var y = new float[Rows * H];
        b.SwiGluFfn(x, Rows, gu, dn, y);
        TestData.AssertBitwiseEqual(expected, y, "SwiGluFfn vs MatMul ∘ SiluMul ∘ MatMul");
        var grouped = new float[Rows * H];
        b.SwiGluFfnGrouped(x, [7, 0, 12], [gu, gu, gu], [dn, dn, dn], grouped);
        TestData.AssertBitwiseEqual(y, grouped, "grouped vs single");
    }

    [Bf16Fact]
    public void Bf16_IsCloseToFp32_OnAMaverickWidthFfn()
    {
        // What the precision costs: relative error of the bf16 FFN against the fp32 one at hidden 5120.
        using var fp32 = new CpuKernelBackend(2);
        var b = s_two.Value;
        const int Rows = 4, H = 5120, I = 256;
        var x = TestData.Floats(Rows * H, 11);
        var guBits = TestData.Bf16(H * 2 * I, 12, 0.05f);
        var dnBits = TestData.Bf16(I * H, 13, 0.05f);
        float[] Run(CpuKernelBackend be)
        {
            using var gu = be.CreateWeight(guBits, H, 2 * I, WeightLayout.InOut);
            using var dn = be.CreateWeight(dnBits, I, H, WeightLayout.InOut);
            var y = new float[Rows * H];
            be.SwiGluFfn(x, Rows, gu, dn, y);
            return y;
        }
        var a = Run(fp32);
        var c = Run(b);
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++)
        {
            num += (a[i] - c[i]) * (double)(a[i] - c[i]);
            den += a[i] * (double)a[i];
        }
        double rel = Math.Sqrt(num / den);
        Assert.InRange(rel, 1e-6, 1e-2); // rounding happened, and only at bf16 resolution (2⁻⁸ per input)
    }

    [Fact]
    public void RoundToBf16_RoundsToNearestEvenAndKeepsSpecials()
    {
        Assert.Equal(0x3F80u, Bf16DotKernels.RoundToBf16(0x3F808000u)); // tie, even stays
        Assert.Equal(0x3F82u, Bf16DotKernels.RoundToBf16(0x3F818000u)); // tie, odd rounds up
        Assert.Equal(0x3F81u, Bf16DotKernels.RoundToBf16(0x3F808001u)); // above the tie
        Assert.Equal(0x7F80u, Bf16DotKernels.RoundToBf16(0x7F800000u)); // +inf
        Assert.Equal(0xFF80u, Bf16DotKernels.RoundToBf16(0xFF800000u)); // -inf
        Assert.Equal(0x7F80u, Bf16DotKernels.RoundToBf16(0x7F7FFFFFu)); // max finite rounds to inf
        uint nan = Bf16DotKernels.RoundToBf16(0x7F800001u); // a NaN whose payload sits below bit 16 stays NaN
        Assert.True((nan & 0x7F80u) == 0x7F80u && (nan & 0x7Fu) != 0, $"0x{nan:X4} is not a NaN");
    }

    [Fact]
    public unsafe void ToPairs_VectorAndScalarPathsAgree_AndPadOddK()
    {
        foreach (int k in new[] { 1, 2, 15, 16, 17, 33, 100 })
        {
            var x = TestData.Floats(2 * k, k, 1000f);
            x[0] = float.NaN;
            int kp = (k + 1) / 2;
            var pairs = new uint[2 * kp];
            fixed (float* px = x)
            fixed (uint* pp = pairs)
            {
                Bf16DotKernels.ToPairs(px, k, 0, 2, k, pp);
            }
            for (int r = 0; r < 2; r++)
            {
                for (int q = 0; q < kp; q++)
                {
                    uint lo = Bf16DotKernels.RoundToBf16(BitConverter.SingleToUInt32Bits(x[(r * k) + (2 * q)]));
                    uint hi = (2 * q) + 1 < k ? Bf16DotKernels.RoundToBf16(BitConverter.SingleToUInt32Bits(x[(r * k) + (2 * q) + 1])) : 0u;
                    Assert.Equal(lo | (hi << 16), pairs[(r * kp) + q]);
                }
            }
        }
    }

    [Fact]
    public void Factory_RejectsAnUnknownPrecision()
    {
        var e = Assert.Throws<ArgumentException>(() =>
            KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cpu, CpuPrecision = (CpuMatMulPrecision)7 }, null));
        Assert.Contains("CpuPrecision", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bf16_IsRefusedWithTheReasonWhereUnavailable_AndNamedWhereAvailable()
    {
        if (CpuKernelBackend.Bf16Unavailable is { } why)
        {
            var e = Assert.Throws<PlatformNotSupportedException>(() => new CpuKernelBackend(1, CpuMatMulPrecision.Bf16));
            Assert.Contains(why, e.Message, StringComparison.Ordinal);
            return;
        }
        using var b = KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cpu, Threads = 1, CpuPrecision = CpuMatMulPrecision.Bf16 }, null);
        Assert.EndsWith("-bf16", b.Name, StringComparison.Ordinal);
        Assert.True(b.Capabilities.BatchInvariant);
    }

    private static ushort[] Transpose(ushort[] a, int rows, int cols)
    {
        var t = new ushort[a.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                t[(c * rows) + r] = a[(r * cols) + c];
            }
        }
        return t;
    }
}
