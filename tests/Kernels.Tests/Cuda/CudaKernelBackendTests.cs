using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// CUDA backend against the CPU backend, op by op. These need a device (or the CPU emulator:
/// <c>tests/Kernels.Tests/Cuda/Emulator/build.sh DIR</c>, then <c>DISTRIBUTED_CUDA_LIBRARY_PATH=DIR dotnet test --filter Category=Gpu</c>)
/// and are skipped with the reason otherwise. Tolerances: GEMM paths 1e-4 of the output scale in Split precision
/// (2e-2 in Fast), fp32 ops 1e-5, ids exact.
/// </summary>
[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Gpu")]
public sealed class CudaKernelBackendTests : IDisposable
{
    private readonly CpuKernelBackend _cpu = new(2);
    private readonly Lazy<CudaKernelBackend> _gpu = new(() => new CudaKernelBackend());

    private CudaKernelBackend Gpu => _gpu.Value;

    public void Dispose()
    {
        _cpu.Dispose();
        if (_gpu.IsValueCreated)
        {
            _gpu.Value.Dispose();
        }
    }

    private static void AssertScaled(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double tolerance, string what)
    {
        double scale = 1e-30;
        foreach (float e in expected)
        {
            scale = Math.Max(scale, Math.Abs(e));
        }
        TestData.AssertClose(expected, actual, _ => tolerance * scale, what);
    }

    [GpuFact]
    public void MatMul_BothLayouts_MatchesCpuWithinSplitTolerance()
    {
        foreach (WeightLayout layout in new[] { WeightLayout.InOut, WeightLayout.OutIn })
        {
            const int k = 96;
            const int n = 80;
            const int rows = 7;
            ushort[] w = TestData.Bf16(k * n, 1, 0.2f);
            float[] x = TestData.Floats(rows * k, 2, 2f);
            using IWeightMatrix wc = _cpu.CreateWeight(w, k, n, layout);
            using IWeightMatrix wg = Gpu.CreateWeight(w, k, n, layout);
            var e = new float[rows * n];
            var a = new float[rows * n];

            _cpu.MatMul(x, rows, wc, e);
            Gpu.MatMul(x, rows, wg, a);

            AssertScaled(e, a, 1e-4, $"MatMul {layout}");
            Assert.Equal(2L * k * n, wg.ResidentBytes);
        }
    }

    [GpuFact]
    public void MatMul_FastPrecision_IsWithinBf16Tolerance()
    {
        using var fast = new CudaKernelBackend(0, new CudaBackendOptions { Precision = CudaPrecision.Fast });
        const int k = 128;
        const int n = 64;
        ushort[] w = TestData.Bf16(k * n, 3, 0.2f);
        float[] x = TestData.Floats(5 * k, 4, 2f);
        using IWeightMatrix wc = _cpu.CreateWeight(w, k, n, WeightLayout.OutIn);
        using IWeightMatrix wg = fast.CreateWeight(w, k, n, WeightLayout.OutIn);
        var e = new float[5 * n];
        var a = new float[5 * n];

        _cpu.MatMul(x, 5, wc, e);
        fast.MatMul(x, 5, wg, a);

        AssertScaled(e, a, 2e-2, "MatMul fast");
    }

    [GpuFact]
    public void SwiGluFfnGrouped_SkewedAndBalancedGroups_MatchCpuOnEveryPath()
    {
        foreach (CudaGroupedGemm path in new[] { CudaGroupedGemm.Auto, CudaGroupedGemm.PerGroup, CudaGroupedGemm.PaddedBatched })
        {
            using var gpu = new CudaKernelBackend(0, new CudaBackendOptions { GroupedGemm = path });
            foreach (int[] counts in new[] { new[] { 0, 3, 1, 0, 9, 2 }, new[] { 2, 2, 1, 2 } })
            {
                const int h = 64;
                const int inter = 48;
                var cw = new List<IWeightMatrix>();
                var gw = new List<IWeightMatrix>();
                try
                {
                    for (int g = 0; g < counts.Length; g++)
                    {
                        ushort[] gu = TestData.Bf16(h * 2 * inter, 10 + g, 0.2f);
                        ushort[] dn = TestData.Bf16(inter * h, 20 + g, 0.2f);
                        cw.Add(_cpu.CreateWeight(gu, h, 2 * inter, WeightLayout.InOut));
                        cw.Add(_cpu.CreateWeight(dn, inter, h, WeightLayout.InOut));
                        gw.Add(gpu.CreateWeight(gu, h, 2 * inter, WeightLayout.InOut));
                        gw.Add(gpu.CreateWeight(dn, inter, h, WeightLayout.InOut));
                    }
                    int rows = counts.Sum();
                    float[] x = TestData.Floats(rows * h, 5, 1.5f);
                    var e = new float[rows * h];
                    var a = new float[rows * h];

                    _cpu.SwiGluFfnGrouped(x, counts, cw.Where((_, i) => i % 2 == 0).ToList(), cw.Where((_, i) => i % 2 == 1).ToList(), e);
                    gpu.SwiGluFfnGrouped(x, counts, gw.Where((_, i) => i % 2 == 0).ToList(), gw.Where((_, i) => i % 2 == 1).ToList(), a);

                    AssertScaled(e, a, 1e-4, $"grouped {path} [{string.Join(',', counts)}] via {gpu.LastGroupedMode}");
                }
                finally
                {
                    foreach (IWeightMatrix m in cw.Concat(gw))
                    {
                        m.Dispose();
                    }
                }
            }
        }
    }

    [GpuFact]
    public void SwiGluFfnGrouped_MixedLayoutsAndIntermediateSizes_MatchCpu()
    {
        const int h = 32;
        int[] inters = [16, 16, 24];
        WeightLayout[] layouts = [WeightLayout.InOut, WeightLayout.OutIn, WeightLayout.InOut];
        int[] counts = [3, 2, 4];
        var cgu = new List<IWeightMatrix>();
        var cdn = new List<IWeightMatrix>();
        var ggu = new List<IWeightMatrix>();
        var gdn = new List<IWeightMatrix>();
        try
        {
            for (int g = 0; g < counts.Length; g++)
            {
                ushort[] gu = TestData.Bf16(h * 2 * inters[g], 30 + g, 0.2f);
                ushort[] dn = TestData.Bf16(inters[g] * h, 40 + g, 0.2f);
                cgu.Add(_cpu.CreateWeight(gu, h, 2 * inters[g], layouts[g]));
                cdn.Add(_cpu.CreateWeight(dn, inters[g], h, layouts[g]));
                ggu.Add(Gpu.CreateWeight(gu, h, 2 * inters[g], layouts[g]));
                gdn.Add(Gpu.CreateWeight(dn, inters[g], h, layouts[g]));
            }
            float[] x = TestData.Floats(counts.Sum() * h, 6, 1.5f);
            var e = new float[x.Length];
            var a = new float[x.Length];

            _cpu.SwiGluFfnGrouped(x, counts, cgu, cdn, e);
            Gpu.SwiGluFfnGrouped(x, counts, ggu, gdn, a);

            AssertScaled(e, a, 1e-4, "mixed layouts and intermediate sizes");
        }
        finally
        {
            foreach (IWeightMatrix m in cgu.Concat(cdn).Concat(ggu).Concat(gdn))
            {
                m.Dispose();
            }
        }
    }

    [GpuFact]
    public void PagedKvStore_InDeviceMemory_AttentionMatchesCpuContiguous_AndRefusesBadInput()
    {
        foreach (var (blockSize, keys, firstSlot, chunk) in new[] { (16, 40, 5, 0), (16, 1, 0, 0), (4, 97, 3, 8), (1, 23, 0, 4), (16, 300, 7, 128) })
        {
            var p = new AttentionParams(8, 2, 16, 0.25f, chunk);
            using var store = KvBlockStores.Create(Gpu, 64, blockSize, p.KvHeads * p.HeadDim);
            Assert.IsNotType<HostKvBlockStore>(store);
            Assert.StartsWith("cuda:", store.Location);
            var (paged, contiguous) = KvBlockStoreScenario.Run(store, _cpu, Math.Min(keys, 6), keys, firstSlot, p, seed: blockSize * 31 + keys);
            AssertScaled(contiguous, paged, 1e-5, $"paged attention on the device, block {blockSize}, keys {keys}, first slot {firstSlot}, chunk {chunk}");
        }
        using var small = KvBlockStores.Create(Gpu, 2, 4, 4);
        var row = new float[4];
        Assert.Contains("outside the store", Assert.Throws<ArgumentException>(() => small.Write([8], row, row)).Message);
        var q = new float[8];
        var o = new float[8];
        Assert.Contains("outside the store's 2 blocks", Assert.Throws<ArgumentException>(() => small.Attention(q, 1, [10], [5], 0, 3, 0, new AttentionParams(2, 1, 4, 0.5f, 0), o)).Message);
        using (var batchStore = KvBlockStores.Create(Gpu, 64, 16, 32))
        {
            var (batched, expected) = KvBlockStoreBatchScenario.Run(batchStore, _cpu, new AttentionParams(8, 2, 16, 0.25f, 8), seed: 5);
            AssertScaled(expected, batched, 1e-5, "three sequences in one device call");
        }
        using (var copyStore = KvBlockStores.Create(Gpu, 8, 16, 32))
        {
            var (original, originalExpected, copy, copyExpected) = KvBlockStoreCopyScenario.Run(copyStore, _cpu, new AttentionParams(8, 2, 16, 0.25f, 0), seed: 9);
            AssertScaled(originalExpected, original, 1e-5, "the original of a copied block on the device");
            AssertScaled(copyExpected, copy, 1e-5, "a copied block written further on the device");
            Assert.Throws<ArgumentException>(() => copyStore.CopyBlock(3, 3));
        }
        foreach (var dtype in new[] { KvCacheDType.Bf16, KvCacheDType.Fp8E4M3 })
        {
            // Codes and (FP8) row scales are copied: the copy attends like the rows rounded once.
            using var typedCopy = KvBlockStores.Create(Gpu, 8, 16, 32, dtype: dtype);
            var (original, originalExpected, copy, copyExpected) = KvBlockStoreCopyScenario.Run(typedCopy, _cpu, new AttentionParams(8, 2, 16, 0.25f, 0), seed: 13);
            AssertScaled(originalExpected, original, 1e-5, $"the original of a copied {dtype} block on the device");
            AssertScaled(copyExpected, copy, 1e-5, $"a copied {dtype} block written further on the device");
        }
        // A host-memory store of the same backend (the baseline) gives the contiguous CUDA result.
        using var host = KvBlockStores.Create(Gpu, 64, 16, 32, preferBackend: false);
        Assert.IsType<HostKvBlockStore>(host);
    }

    /// <summary>
    /// The device store in bf16 and FP8 (kv_scatter_bf16/fp8, attention_split_bf16/fp8): rows rounded on the device as
    /// the host store rounds them, attention equal to the CPU's contiguous attention on the rounded rows, alone and batched.
    /// </summary>
    [GpuFact]
    public void PagedKvStore_Bf16AndFp8_InDeviceMemory_MatchCpuOnTheRoundedRows()
    {
        foreach (var dtype in new[] { KvCacheDType.Bf16, KvCacheDType.Fp8E4M3 })
        {
            foreach (var (blockSize, keys, firstSlot, chunk) in new[] { (16, 40, 5, 0), (4, 97, 3, 8), (16, 300, 7, 128) })
            {
                var p = new AttentionParams(8, 2, 16, 0.25f, chunk);
                using var store = KvBlockStores.Create(Gpu, 64, blockSize, p.KvHeads * p.HeadDim, dtype: dtype);
                Assert.Equal(dtype, store.DType);
                var (paged, contiguous) = KvBlockStoreScenario.Run(store, _cpu, Math.Min(keys, 6), keys, firstSlot, p, seed: blockSize * 31 + keys);
                AssertScaled(contiguous, paged, 1e-5, $"{dtype} device store, block {blockSize}, keys {keys}, first slot {firstSlot}, chunk {chunk}");
            }
            using var batchStore = KvBlockStores.Create(Gpu, 64, 16, 32, dtype: dtype);
            var (batched, expected) = KvBlockStoreBatchScenario.Run(batchStore, _cpu, new AttentionParams(8, 2, 16, 0.25f, 8), seed: 5);
            AssertScaled(expected, batched, 1e-5, $"{dtype}: three sequences in one device call");
        }
        Assert.Equal(KvCacheDType.Bf16, KvCacheDTypes.DefaultFor(Gpu));
    }

    /// <summary>
    /// FP8 weights on the device (fp8_gemm, fp8_quant_rows): bitwise the CPU backend's matmul (the same FMA chain per
    /// element and the same scale epilogue), weight-only and W8A8, both layouts; the FFN within SiLU's ulp of the CPU.
    /// </summary>
    [GpuFact]
    public void Fp8Weights_MatMulIsBitwiseTheCpus_AndTheFfnMatches()
    {
        foreach (var mode in new[] { Fp8ActivationMode.WeightOnly, Fp8ActivationMode.PerTokenFp8 })
        {
            foreach (var layout in new[] { WeightLayout.OutIn, WeightLayout.InOut })
            {
                foreach (var (rows, k, n) in new[] { (1, 64, 96), (7, 100, 70), (33, 96, 130) })
                {
                    var codes = Cpu.CpuFp8MatMulTests.Codes(k * n, rows + k, uniform: true);
                    var scales = Cpu.CpuFp8MatMulTests.Scales(n, n);
                    var x = TestData.Floats(rows * k, rows, 2f);
                    using var wc = _cpu.CreateFp8Weight(codes, scales, k, n, layout, mode);
                    using var wg = Gpu.CreateFp8Weight(codes, scales, k, n, layout, mode);
                    Assert.Equal((long)k * n + 4L * n, wg.ResidentBytes);
                    var e = new float[rows * n];
                    var a = new float[rows * n];
                    _cpu.MatMul(x, rows, wc, e);
                    Gpu.MatMul(x, rows, wg, a);
                    TestData.AssertBitwiseEqual(e, a, $"FP8 MatMul {mode} {layout} {rows}x{k}x{n}");
                }
            }
            const int H = 64, I = 32;
            using var gu = Gpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(2 * I * H, 1, false), Cpu.CpuFp8MatMulTests.Scales(2 * I, 2), H, 2 * I, WeightLayout.OutIn, mode);
            using var dn = Gpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(I * H, 3, false), Cpu.CpuFp8MatMulTests.Scales(H, 4), I, H, WeightLayout.OutIn, mode);
            using var cgu = _cpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(2 * I * H, 1, false), Cpu.CpuFp8MatMulTests.Scales(2 * I, 2), H, 2 * I, WeightLayout.OutIn, mode);
            using var cdn = _cpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(I * H, 3, false), Cpu.CpuFp8MatMulTests.Scales(H, 4), I, H, WeightLayout.OutIn, mode);
            using var bgu = Gpu.CreateWeight(TestData.Bf16(H * 2 * I, 5), H, 2 * I, WeightLayout.InOut);
            using var bdn = Gpu.CreateWeight(TestData.Bf16(I * H, 6), I, H, WeightLayout.InOut);
            using var cbgu = _cpu.CreateWeight(TestData.Bf16(H * 2 * I, 5), H, 2 * I, WeightLayout.InOut);
            using var cbdn = _cpu.CreateWeight(TestData.Bf16(I * H, 6), I, H, WeightLayout.InOut);
            int[] counts = [5, 3];
            var fx = TestData.Floats(8 * H, 7);
            var fe = new float[8 * H];
            var fa = new float[8 * H];
            _cpu.SwiGluFfnGrouped(fx, counts, [cgu, cbgu], [cdn, cbdn], fe);
            Gpu.SwiGluFfnGrouped(fx, counts, [gu, bgu], [dn, bdn], fa);
            AssertScaled(fe, fa, 1e-4, $"FP8 + bf16 experts in one grouped FFN, {mode}");
        }
        Assert.Throws<ArgumentException>(() => Gpu.CreateFp8Weight(new byte[12], [1f, 0f, 1f], 4, 3, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
    }

    [GpuFact]
    public void Attention_ChunkedGqaDecodeAndEmptyVisibility_MatchCpu()
    {
        var cases = new[]
        {
            (Rows: 20, Keys: 20, Start: 0, Chunk: 8, Pos: (Func<int, int>)(i => i)),
            (Rows: 1, Keys: 50, Start: 0, Chunk: 0, Pos: (Func<int, int>)(_ => 49)),
            (Rows: 6, Keys: 9, Start: 4, Chunk: 4, Pos: (Func<int, int>)(i => 1 + (2 * i))),
        };
        foreach (var c in cases)
        {
            var p = new AttentionParams(4, 2, 16, 0.25f, c.Chunk);
            float[] q = TestData.Floats(c.Rows * 4 * 16, 7, 2f);
            float[] k = TestData.Floats(c.Keys * 2 * 16, 8, 2f);
            float[] v = TestData.Floats(c.Keys * 2 * 16, 9, 2f);
            int[] pos = Enumerable.Range(0, c.Rows).Select(c.Pos).ToArray();
            var e = new float[q.Length];
            var a = new float[q.Length];

            _cpu.Attention(q, c.Rows, pos, k, v, c.Keys, c.Start, p, e);
            Gpu.Attention(q, c.Rows, pos, k, v, c.Keys, c.Start, p, a);

            AssertScaled(e, a, 1e-5, $"attention rows={c.Rows} keys={c.Keys} start={c.Start} chunk={c.Chunk}");
        }
    }

    [GpuFact]
    public void RowOps_MatchCpu()
    {
        float[] x = TestData.Floats(9 * 300, 11, 3f);
        float[] w = TestData.Floats(300, 12, 1f);
        var e = new float[x.Length];
        var a = new float[x.Length];
        _cpu.RmsNorm(x, 9, 300, w, 1e-5f, e);
        Gpu.RmsNorm(x, 9, 300, w, 1e-5f, a);
        AssertScaled(e, a, 1e-5, "rmsnorm");

        float[] s1 = (float[])x.Clone();
        float[] s2 = (float[])x.Clone();
        s1[0] = 1000f;
        s2[0] = 1000f;
        _cpu.SoftmaxStable(s1, 9, 300);
        Gpu.SoftmaxStable(s2, 9, 300);
        TestData.AssertClose(s1, s2, _ => 1e-6, "softmax");

        float[] g = TestData.Floats(1000, 13, 10f);
        float[] u = TestData.Floats(1000, 14, 2f);
        var se = new float[1000];
        var sa = new float[1000];
        _cpu.SiluMul(g, u, se);
        Gpu.SiluMul(g, u, sa);
        AssertScaled(se, sa, 1e-5, "silu_mul");

        RopeTable table = RopeTable.Create(16, 500000, null);
        float[] r1 = TestData.Floats(5 * 3 * 16, 15, 2f);
        float[] r2 = (float[])r1.Clone();
        int[] positions = [0, 1, 17, 300, 4095];
        _cpu.Rope(r1, 5, 3, positions, table);
        Gpu.Rope(r2, 5, 3, positions, table);
        AssertScaled(r1, r2, 1e-5, "rope");

        float[] d1 = TestData.Floats(777, 16, 1f);
        float[] d2 = (float[])d1.Clone();
        float[] src = TestData.Floats(777, 17, 1f);
        _cpu.Add(d1, src);
        Gpu.Add(d2, src);
        Assert.Equal(d1, d2);
    }

    [GpuFact]
    public void VisionOps_MatchCpu()
    {
        float[] x = TestData.Floats(9 * 300, 21, 3f).Select((v, i) => v + (i / 300 * 20f)).ToArray();
        float[] w = TestData.Floats(300, 22, 1f);
        float[] bias = TestData.Floats(300, 23, 0.5f);
        var e = new float[x.Length];
        var a = new float[x.Length];
        _cpu.LayerNorm(x, 9, 300, w, bias, 1e-5f, e);
        Gpu.LayerNorm(x, 9, 300, w, bias, 1e-5f, a);
        AssertScaled(e, a, 1e-5, "layernorm");

        float[] g = TestData.Floats(1000, 24, 8f);
        var ge = new float[1000];
        var ga = new float[1000];
        _cpu.Gelu(g, ge);
        Gpu.Gelu(g, ga);
        AssertScaled(ge, ga, 1e-6, "gelu");

        float[] b1 = TestData.Floats(7 * 80, 25, 2f);
        float[] b2 = (float[])b1.Clone();
        float[] row = TestData.Floats(80, 26, 1f);
        _cpu.AddBias(b1, 7, row);
        Gpu.AddBias(b2, 7, row);
        Assert.Equal(b1, b2);

        const int rows = 17;
        float[] r1 = TestData.Floats(rows * 4 * 12, 27, 2f);
        float[] r2 = (float[])r1.Clone();
        float[] cosSin = new float[rows * 12];
        for (int i = 0; i < rows * 6; i++)
        {
            cosSin[2 * i] = MathF.Cos(i * 0.3f);
            cosSin[(2 * i) + 1] = MathF.Sin(i * 0.3f);
        }
        _cpu.RotatePairs(r1, rows, 4, 12, cosSin);
        Gpu.RotatePairs(r2, rows, 4, 12, cosSin);
        AssertScaled(r1, r2, 1e-6, "rotate_pairs");

        // 300 tokens per block takes the split-key kernels, 17 the single-block one.
        foreach (int tokens in new[] { 17, 300 })
        {
            int n = 2 * tokens * 2 * 16;
            float[] q = TestData.Floats(n, 28, 2f);
            float[] k = TestData.Floats(n, 29, 2f);
            float[] v = TestData.Floats(n, 30, 2f);
            var oe = new float[n];
            var oa = new float[n];
            _cpu.BidirectionalAttention(q, k, v, 2, tokens, 2, 16, 0.25f, oe);
            Gpu.BidirectionalAttention(q, k, v, 2, tokens, 2, 16, 0.25f, oa);
            AssertScaled(oe, oa, 1e-5, $"bidirectional attention, {tokens} tokens");
        }
    }

    [GpuFact]
    public void Selection_TopKAndArgmax_AreExactWithTiesAndNaN()
    {
        const int rows = 6;
        const int cols = 40;
        float[] x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = (i * 7 % 5) * 0.5f;
        }
        x[3] = float.NaN;
        x[cols + 1] = float.PositiveInfinity;
        var ie = new int[rows * 3];
        var ia = new int[rows * 3];
        var ve = new float[rows * 3];
        var va = new float[rows * 3];
        _cpu.TopK(x, rows, cols, 3, ie, ve);
        Gpu.TopK(x, rows, cols, 3, ia, va);
        Assert.Equal(ie, ia);
        Assert.Equal(ve, va);

        var ae = new int[rows];
        var aa = new int[rows];
        _cpu.Argmax(x, rows, cols, ae);
        Gpu.Argmax(x, rows, cols, aa);
        Assert.Equal(ae, aa);
    }

    [GpuFact]
    public void Validation_WrongShapesAndForeignWeights_ThrowArgumentException()
    {
        using IWeightMatrix cpuWeight = _cpu.CreateWeight(TestData.Bf16(16, 1), 4, 4, WeightLayout.InOut);
        using IWeightMatrix gpuWeight = Gpu.CreateWeight(TestData.Bf16(16, 1), 4, 4, WeightLayout.InOut);

        Assert.Throws<ArgumentException>(() => Gpu.MatMul(new float[8], 2, cpuWeight, new float[8]));
        Assert.Throws<ArgumentException>(() => Gpu.MatMul(new float[7], 2, gpuWeight, new float[8]));
        Assert.Throws<ArgumentException>(() => Gpu.CreateWeight(new ushort[15], 4, 4, WeightLayout.InOut));
        Assert.Throws<ArgumentException>(() => Gpu.TopK(new float[8], 2, 4, 5, new int[10], new float[10]));
    }
}
