using Distributed.Kernels.Cpu;

namespace Distributed.Kernels.Tests.Cpu;

/// <summary>
/// The edges of the matmul tiling, on every SIMD level (the Vector256 level is the AVX2 path even on an AVX-512 machine;
/// run this class with <c>DOTNET_EnableAVX512=0</c> to also get the JIT's 16-register AVX2 code): row counts that are
/// not a multiple of any row block, k lengths around the k-slice length (one line, odd tails, one past a slice), a
/// partial last panel, and calls that cover only a panel range. Every output element must be bitwise the sequential
/// FMA chain <c>acc = fma(x[r, k], W[k, c], acc)</c> from +0 in k order, whatever tile it lands in.
/// </summary>
[Trait("Category", "Unit")]
public sealed class CpuMatMulTileTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    // Rows around the 6-row (Vector256) and 8-row (Vector512) blocks and their balanced splits; K around the 256-line
    // k slice (1, even/odd tails, exactly one slice, one past it, three slices with an odd tail).
    private static readonly int[] s_rows = [7, 8, 11, 13, 19, 37];
    private static readonly int[] s_k = [1, 2, 255, 256, 257, 771];
    private static readonly int[] s_n = [32, 95];

    private static float[] SequentialFma(float[] x, int rows, ushort[] bits, int k, int n)
    {
        var y = new float[rows * n];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < n; c++)
            {
                float acc = 0f;
                for (int kk = 0; kk < k; kk++)
                {
                    acc = MathF.FusedMultiplyAdd(x[(r * k) + kk], DTypeInfo.Bf16ToFloat(bits[(kk * n) + c]), acc);
                }
                y[(r * n) + c] = acc;
            }
        }
        return y;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_TileEdges_EqualTheSequentialFmaChainBitwise(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 100;
        foreach (int k in s_k)
        {
            foreach (int n in s_n)
            {
                var bits = TestData.Bf16(k * n, seed++);
                var x = TestData.Floats(s_rows.Max() * k, seed++);
                using var w = b.CreateWeight(bits, k, n, WeightLayout.InOut);
                var expected = SequentialFma(x, s_rows.Max(), bits, k, n);
                foreach (int rows in s_rows)
                {
                    var y = new float[rows * n];
                    b.MatMul(x.AsSpan(0, rows * k), rows, w, y);
                    TestData.AssertBitwiseEqual(expected.AsSpan(0, rows * n), y, $"{backend} MatMul {rows}x{k}x{n}");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void MatMul_Fp8TileEdges_EqualTheSequentialFmaChainBitwise(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 200;
        foreach (int k in s_k)
        {
            foreach (int n in s_n)
            {
                var codes = CpuFp8MatMulTests.Codes(k * n, seed++, uniform: false);
                var scales = CpuFp8MatMulTests.Scales(n, seed++);
                var x = TestData.Floats(s_rows.Max() * k, seed++);
                using var w = b.CreateFp8Weight(codes, scales, k, n, WeightLayout.InOut, Fp8ActivationMode.WeightOnly);
                var expected = CpuFp8MatMulTests.Reference(x, s_rows.Max(), codes, scales, k, n, WeightLayout.InOut, Fp8ActivationMode.WeightOnly);
                foreach (int rows in s_rows)
                {
                    var y = new float[rows * n];
                    b.MatMul(x.AsSpan(0, rows * k), rows, w, y);
                    TestData.AssertBitwiseEqual(expected.AsSpan(0, rows * n), y, $"{backend} FP8 MatMul {rows}x{k}x{n}");
                }
            }
        }
    }

    /// <summary>
    /// A call over panels [p0, p1) (how the thread team splits a matmul) writes exactly those columns, each equal to the
    /// whole call's, and leaves every other column alone.
    /// </summary>
    [Fact]
    public unsafe void Compute_PanelRanges_WriteOnlyTheirColumnsWithTheWholeCallsValues()
    {
        const int K = 300, N = 150, Rows = 13;
        var bits = TestData.Bf16(K * N, 301);
        var codes = CpuFp8MatMulTests.Codes(K * N, 302, uniform: false);
        var scales = CpuFp8MatMulTests.Scales(N, 303);
        var x = TestData.Floats(Rows * K, 304);
        foreach (string name in TestBackends.AllNames.Where(n => n.EndsWith("/1", StringComparison.Ordinal)))
        {
            var b = TestBackends.Get(name);
            using var bf16 = b.CreateWeight(bits, K, N, WeightLayout.InOut);
            using var fp8 = b.CreateFp8Weight(codes, scales, K, N, WeightLayout.InOut, Fp8ActivationMode.WeightOnly);
            foreach (var w in new[] { (PackedWeight)bf16, (PackedWeight)fp8 })
            {
                foreach (int rows in new[] { 1, 5, Rows })
                {
                    var whole = new float[rows * N];
                    b.MatMul(x.AsSpan(0, rows * K), rows, w, whole);
                    // Panels: 0-3 full, 4 partial (columns 128-149).
                    foreach (var (p0, p1) in new[] { (0, 1), (1, 3), (2, 5), (4, 5), (0, 5), (3, 3) })
                    {
                        var y = new float[rows * N];
                        y.AsSpan().Fill(float.NaN);
                        fixed (float* px = x, py = y)
                        {
                            MatMulKernels.Compute(b.Simd, px, K, rows, w, p0, p1, py, N);
                        }
                        for (int r = 0; r < rows; r++)
                        {
                            for (int c = 0; c < N; c++)
                            {
                                bool inside = c >= p0 * PackedWeight.PanelWidth && c < p1 * PackedWeight.PanelWidth;
                                float got = y[(r * N) + c];
                                string where = $"{name} {w.Layout} rows {rows} panels [{p0}, {p1}) row {r} column {c}";
                                if (inside)
                                {
                                    Assert.True(BitConverter.SingleToInt32Bits(whole[(r * N) + c]) == BitConverter.SingleToInt32Bits(got),
                                        $"{where}: {got:R}, the whole call gave {whole[(r * N) + c]:R}");
                                }
                                else
                                {
                                    Assert.True(float.IsNaN(got), $"{where}: written ({got:R}) outside the panel range");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
