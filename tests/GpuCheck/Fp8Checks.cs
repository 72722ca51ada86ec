using System.Diagnostics;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.GpuCheck;

/// <summary>
/// Issue #12 on the device: FP8 weights (<c>fp8_gemm</c>, <c>fp8_quant_rows</c>) and bf16/FP8 KV stores against the CPU
/// backend, and the FP8 expert FFN at Maverick width against bf16 in the same run.
/// </summary>
internal static class Fp8Checks
{
    private static readonly int s_divisor =
        int.TryParse(Environment.GetEnvironmentVariable("DISTRIBUTED_GPUCHECK_BENCH_DIVISOR"), out int d) && d > 0 ? d : 1;

    /// <summary>Random finite E4M3 codes (every code but the two NaNs).</summary>
    internal static byte[] Codes(long n, Rng rng)
    {
        var codes = new byte[n];
        for (long i = 0; i < n; i++)
        {
            byte c;
            do
            {
                c = (byte)rng.Next();
            }
            while (Fp8E4M3.IsNaN(c));
            codes[i] = c;
        }
        return codes;
    }

    internal static float[] Scales(int n, Rng rng)
    {
        var s = new float[n];
        for (int i = 0; i < n; i++)
        {
            s[i] = 1e-3f * (1.5f + rng.Uniform(1f));
        }
        return s;
    }

    /// <summary>
    /// Pass criteria: FP8 MatMul bitwise equal to the CPU backend (weight-only and W8A8, both layouts: the same FMA chain
    /// per element and the same scale epilogue); a grouped FFN mixing FP8 and bf16 experts within 1e-4 of the output scale
    /// (the SiLU's expf differs by an ulp); paged attention over a bf16 and an FP8 device store within 1e-5 of the CPU's
    /// host store of the same element type (which rounds the rows identically).
    /// </summary>
    public static void Parity(CheckReport report, CpuKernelBackend cpu, CudaKernelBackend gpu)
    {
        const string section = "FP8 weights and KV element types vs CpuKernelBackend (issue #12)";
        var rng = new Rng(4242);
        foreach (var mode in new[] { Fp8ActivationMode.WeightOnly, Fp8ActivationMode.PerTokenFp8 })
        {
            foreach (var layout in new[] { WeightLayout.OutIn, WeightLayout.InOut })
            {
                foreach (var (rows, k, n) in new[] { (1, 5120 / s_divisor, 1024 / s_divisor), (7, 257, 130), (64, 1024 / s_divisor, 512 / s_divisor) })
                {
                    report.Check(section, $"FP8 MatMul {mode} {layout} {rows}x{k}x{n}", () =>
                    {
                        var codes = Codes((long)k * n, rng);
                        var scales = Scales(n, rng);
                        var x = rng.Floats((long)rows * k, 2f);
                        using var wc = cpu.CreateFp8Weight(codes, scales, k, n, layout, mode);
                        using var wg = gpu.CreateFp8Weight(codes, scales, k, n, layout, mode);
                        var e = new float[rows * n];
                        var a = new float[rows * n];
                        cpu.MatMul(x, rows, wc, e);
                        gpu.MatMul(x, rows, wg, a);
                        int diff = Enumerable.Range(0, e.Length).Count(i => BitConverter.SingleToInt32Bits(e[i]) != BitConverter.SingleToInt32Bits(a[i]));
                        return (diff == 0, diff == 0 ? "bitwise equal" : $"{diff} of {e.Length} elements differ; max abs {ErrorStats.Of(a, e).MaxAbs:0.###e+0}");
                    });
                }
            }
            report.Check(section, $"grouped FFN, FP8 ({mode}) and bf16 experts in one call", () =>
            {
                int h = 5120 / s_divisor / 4, inter = 8192 / s_divisor / 4;
                var weights = new List<IWeightMatrix>();
                try
                {
                    IWeightMatrix Keep(IWeightMatrix w)
                    {
                        weights.Add(w);
                        return w;
                    }
                    var guCodes = Codes((long)2 * inter * h, rng);
                    var guScales = Scales(2 * inter, rng);
                    var dnCodes = Codes((long)h * inter, rng);
                    var dnScales = Scales(h, rng);
                    ushort[] guBf16 = rng.Bf16((long)h * 2 * inter, 0.05f);
                    ushort[] dnBf16 = rng.Bf16((long)inter * h, 0.05f);
                    IWeightMatrix[] cpuGu = [Keep(cpu.CreateFp8Weight(guCodes, guScales, h, 2 * inter, WeightLayout.OutIn, mode)), Keep(cpu.CreateWeight(guBf16, h, 2 * inter, WeightLayout.InOut))];
                    IWeightMatrix[] cpuDn = [Keep(cpu.CreateFp8Weight(dnCodes, dnScales, inter, h, WeightLayout.OutIn, mode)), Keep(cpu.CreateWeight(dnBf16, inter, h, WeightLayout.InOut))];
                    IWeightMatrix[] gpuGu = [Keep(gpu.CreateFp8Weight(guCodes, guScales, h, 2 * inter, WeightLayout.OutIn, mode)), Keep(gpu.CreateWeight(guBf16, h, 2 * inter, WeightLayout.InOut))];
                    IWeightMatrix[] gpuDn = [Keep(gpu.CreateFp8Weight(dnCodes, dnScales, inter, h, WeightLayout.OutIn, mode)), Keep(gpu.CreateWeight(dnBf16, inter, h, WeightLayout.InOut))];
                    int[] counts = [9, 4];
                    var x = rng.Floats(13L * h, 1f);
                    var e = new float[x.Length];
                    var a = new float[x.Length];
                    cpu.SwiGluFfnGrouped(x, counts, cpuGu, cpuDn, e);
                    gpu.SwiGluFfnGrouped(x, counts, gpuGu, gpuDn, a);
                    var stats = ErrorStats.Of(a, e);
                    double normalized = stats.MaxAbs / Math.Max(1e-30, e.Max(Math.Abs));
                    return (normalized <= 1e-4, $"normalized max abs {normalized:0.###e+0} (tolerance 1e-4)");
                }
                finally
                {
                    foreach (var w in weights)
                    {
                        w.Dispose();
                    }
                }
            });
        }
        foreach (var dtype in new[] { KvCacheDType.Bf16, KvCacheDType.Fp8E4M3 })
        {
            report.Check(section, $"paged attention, {dtype} KV store in device memory", () =>
            {
                var p = new AttentionParams(8, 2, 128, 0.088f, 0);
                int w = p.KvHeads * p.HeadDim, keys = 1000, blockSize = 16;
                using IKvBlockStore device = KvBlockStores.Create(gpu, 128, blockSize, w, dtype: dtype);
                using IKvBlockStore host = KvBlockStores.Create(cpu, 128, blockSize, w, dtype: dtype);
                var table = Enumerable.Range(0, (keys + blockSize - 1) / blockSize).Reverse().ToArray();
                var slots = Enumerable.Range(0, keys).Select(j => (table[j / blockSize] * blockSize) + (j % blockSize)).ToArray();
                var k = rng.Floats((long)keys * w, 1f);
                var v = rng.Floats((long)keys * w, 1f);
                device.Write(slots, k, v);
                host.Write(slots, k, v);
                var q = rng.Floats(2L * p.Heads * p.HeadDim, 1f);
                int[] positions = [keys - 2, keys - 1];
                var e = new float[q.Length];
                var a = new float[q.Length];
                host.Attention(q, 2, positions, table, 0, keys, 0, p, e);
                device.Attention(q, 2, positions, table, 0, keys, 0, p, a);
                double normalized = ErrorStats.Of(a, e).MaxAbs / Math.Max(1e-30, e.Max(Math.Abs));
                return (normalized <= 1e-5, $"{keys} keys; normalized max abs {normalized:0.###e+0} against the CPU's {dtype} host store (tolerance 1e-5)");
            });
        }
    }

    /// <summary>
    /// The routed-expert SwiGLU FFN at Maverick width (16 experts, host → host through SwiGluFfnGrouped) with FP8 weights
    /// (fp8_gemm) against bf16 weights (cuBLAS, Split precision) in the same run; weight bytes read per second as a share
    /// of the device-to-device copy rate. Information only.
    /// </summary>
    public static void ExpertFfnBench(CheckReport report, CudaKernelBackend gpu, double copyGbps, bool quick)
    {
        const int Experts = 16;
        int h = 5120 / s_divisor, inter = 8192 / s_divisor;
        var rng = new Rng(99);
        var guCodes = Codes((long)2 * inter * h, rng);
        var dnCodes = Codes((long)h * inter, rng);
        var guScales = Scales(2 * inter, rng);
        var dnScales = Scales(h, rng);
        ushort[] guBf16 = rng.Bf16((long)h * 2 * inter, 0.05f);
        ushort[] dnBf16 = rng.Bf16((long)inter * h, 0.05f);
        var fp8Gu = new List<IWeightMatrix>();
        var fp8Dn = new List<IWeightMatrix>();
        var bfGu = new List<IWeightMatrix>();
        var bfDn = new List<IWeightMatrix>();
        try
        {
            for (int e = 0; e < Experts; e++)
            {
                fp8Gu.Add(gpu.CreateFp8Weight(guCodes, guScales, h, 2 * inter, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
                fp8Dn.Add(gpu.CreateFp8Weight(dnCodes, dnScales, inter, h, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly));
                bfGu.Add(gpu.CreateWeight(guBf16, h, 2 * inter, WeightLayout.InOut));
                bfDn.Add(gpu.CreateWeight(dnBf16, inter, h, WeightLayout.InOut));
            }
            foreach (int perExpert in quick ? new[] { 1, 4 } : new[] { 1, 4, 32 })
            {
                int rows = perExpert * Experts;
                int[] counts = Enumerable.Repeat(perExpert, Experts).ToArray();
                var x = rng.Floats((long)rows * h, 1f);
                var y = new float[x.Length];
                double Time(List<IWeightMatrix> gu, List<IWeightMatrix> dn)
                {
                    gpu.SwiGluFfnGrouped(x, counts, gu, dn, y);
                    var sw = Stopwatch.StartNew();
                    int iterations = quick ? 2 : 5;
                    for (int i = 0; i < iterations; i++)
                    {
                        gpu.SwiGluFfnGrouped(x, counts, gu, dn, y);
                    }
                    return sw.Elapsed.TotalMilliseconds / iterations;
                }
                double fp8Ms = Time(fp8Gu, fp8Dn);
                double bf16Ms = Time(bfGu, bfDn);
                double fp8Bytes = Experts * 3.0 * h * inter;
                report.Bench("FP8 vs bf16 expert FFN at Maverick width (16 experts, host to host)", $"{rows} rows ({perExpert} per expert)", new Dictionary<string, double>
                {
                    ["fp8 ms"] = fp8Ms,
                    ["bf16 ms"] = bf16Ms,
                    ["bf16/fp8 time"] = bf16Ms / fp8Ms,
                    ["fp8 weight GB/s"] = fp8Bytes / (fp8Ms * 1e-3) / 1e9,
                    ["fp8 weights, share of copy BW"] = fp8Bytes / (fp8Ms * 1e-3) / 1e9 / Math.Max(1e-9, copyGbps),
                    ["bf16 weight GB/s"] = 2 * fp8Bytes / (bf16Ms * 1e-3) / 1e9,
                }, "fp8 = fp8_gemm (shared-memory decode, fp32 FMA, batch invariant); bf16 = cuBLAS GemmEx, Split precision");
            }
        }
        finally
        {
            foreach (var w in fp8Gu.Concat(fp8Dn).Concat(bfGu).Concat(bfDn))
            {
                w.Dispose();
            }
        }
    }
}
