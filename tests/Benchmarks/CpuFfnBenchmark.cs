using System.Diagnostics;
using System.Globalization;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;

namespace Distributed.Benchmarks;

/// <summary>
/// <c>cpu-ffn</c>: SwiGLU expert FFN at Maverick width and dense matmuls, ours (bf16 packed) vs OpenBLAS fp32, each
/// implementation in its own process (two spinning thread pools in one process on 2 vCPUs ruin both; STACK-NOTES
/// pitfall 10), plus memory-bandwidth baselines.
/// </summary>
internal static unsafe class CpuFfnBenchmark
{
    private sealed record Case(string Key, string Label, bool Ffn, int T, int K, int N, double Flops, long WeightBytes);

    private static readonly Case[] s_cases = BuildCases();

    private static Case[] BuildCases()
    {
        var list = new List<Case>();
        foreach (int t in new[] { 1, 16, 128 })
        {
            list.Add(new Case($"ffn5120x8192-T{t}", $"FFN 5120x8192 T={t}", true, t, 5120, 8192, 6.0 * t * 5120 * 8192, 3L * 5120 * 8192 * 2));
        }
        foreach (int t in new[] { 1, 128 })
        {
            list.Add(new Case($"dense5120x5120-T{t}", $"MatMul 5120x5120 T={t}", false, t, 5120, 5120, 2.0 * t * 5120 * 5120, 5120L * 5120 * 2));
        }
        list.Add(new Case("ffn2048x8192-T1", "FFN 2048x8192 T=1", true, 1, 2048, 8192, 6.0 * 2048 * 8192, 3L * 2048 * 8192 * 2));
        return [.. list];
    }

    public static int Run(string[] args)
    {
        string impl = Option(args, "--impl") ?? "both";
        string threadList = Option(args, "--threads") ?? $"1,{Environment.ProcessorCount}";
        var threads = threadList.Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).Distinct().ToArray();
        if (threads.Any(t => t < 1))
        {
            Console.Error.WriteLine("--threads: every value must be >= 1");
            return 2;
        }
        return impl switch
        {
            "ours" => RunOurs(threads[0], CpuMatMulPrecision.Fp32),
            "ours-bf16" => RunOurs(threads[0], CpuMatMulPrecision.Bf16),
            "openblas" => RunOpenBlas(threads[0]),
            "both" => RunWrapper(threads, int.Parse(Option(args, "--rounds") ?? "2", CultureInfo.InvariantCulture)),
            _ => Usage($"unknown --impl '{impl}' (ours | ours-bf16 | openblas | both)"),
        };
    }

    private static int Usage(string message)
    {
        Console.Error.WriteLine(message);
        return 2;
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    private static ushort[] RandomBf16(long n, uint seed)
    {
        // Values in ±[2^-8, 2^-5): a realistic weight magnitude, cheap to generate (xorshift, no FP).
        var a = new ushort[n];
        uint s = seed | 1;
        for (long i = 0; i < n; i++)
        {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            a[i] = (ushort)((s & 0x8000u) | (0x3B80u + ((s >> 16) & 0x17Fu)));
        }
        return a;
    }

    private static float[] RandomFloats(int n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)((rng.NextDouble() * 2) - 1);
        }
        return a;
    }

    private static void Emit(string key, double ms, double flops, long weightBytes) =>
        Console.WriteLine(FormattableString.Invariant($"RESULT {key} {ms:F4} {flops / ms / 1e6:F2} {weightBytes / ms / 1e6:F2}"));

    private static int RunOurs(int threads, CpuMatMulPrecision precision)
    {
        if (precision == CpuMatMulPrecision.Fp32)
        {
            var (copy, read) = MemoryProbe.Measure(threads);
            Console.WriteLine(FormattableString.Invariant($"PROBE {copy:F2} {read:F2}"));
        }
        using var backend = new CpuKernelBackend(threads, precision);
        Console.WriteLine($"BACKEND {backend.Name} | {backend.Capabilities.Device}");
        foreach (var c in s_cases)
        {
            var x = RandomFloats(c.T * c.K, 1);
            if (c.Ffn)
            {
                using var gu = backend.CreateWeight(RandomBf16((long)c.K * 2 * c.N, 2), c.K, 2 * c.N, WeightLayout.InOut);
                using var dn = backend.CreateWeight(RandomBf16((long)c.N * c.K, 3), c.N, c.K, WeightLayout.InOut);
                var y = new float[c.T * c.K];
                double ms = Timing.MedianMs(() => backend.SwiGluFfn(x, c.T, gu, dn, y));
                Emit(c.Key, ms, c.Flops, c.WeightBytes);
            }
            else
            {
                using var w = backend.CreateWeight(RandomBf16((long)c.K * c.N, 4), c.K, c.N, WeightLayout.OutIn);
                var y = new float[c.T * c.N];
                double ms = Timing.MedianMs(() => backend.MatMul(x, c.T, w, y));
                Emit(c.Key, ms, c.Flops, c.WeightBytes);
            }
        }
        return 0;
    }

    private static float[] Widen(ushort[] bits)
    {
        var f = new float[bits.Length];
        for (long i = 0; i < bits.Length; i++)
        {
            f[i] = DTypeInfo.Bf16ToFloat(bits[i]);
        }
        return f;
    }

    private static int RunOpenBlas(int threads)
    {
        if (!OpenBlas.IsAvailable())
        {
            Console.WriteLine($"SKIPPED skipped: {OpenBlas.Library} not found");
            return 0;
        }
        OpenBlas.SetNumThreads(threads);
        Console.WriteLine($"BACKEND openblas | core {OpenBlas.CoreName()}");
        foreach (var c in s_cases)
        {
            var x = RandomFloats(c.T * c.K, 1);
            if (c.Ffn)
            {
                int h = c.K;
                int inter = c.N;
                var gu = Widen(RandomBf16((long)h * 2 * inter, 2));
                var dn = Widen(RandomBf16((long)inter * h, 3));
                var hidden = new float[c.T * 2 * inter];
                var act = new float[c.T * inter];
                var y = new float[c.T * h];
                fixed (float* px = x, pgu = gu, pdn = dn, ph = hidden, pa = act, py = y)
                {
                    float* xx = px, wgu = pgu, wdn = pdn, hh = ph, aa = pa, yy = py;
                    int t = c.T;
                    void Activation()
                    {
                        for (int r = 0; r < t; r++)
                        {
                            VectorOps.SiluMul(SimdLevels.Detect(), hh + ((long)r * 2 * inter), hh + ((long)r * 2 * inter) + inter, aa + ((long)r * inter), inter);
                        }
                    }
                    double gemm = Timing.MedianMs(() =>
                    {
                        OpenBlas.Sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, t, 2 * inter, h, 1f, xx, h, wgu, 2 * inter, 0f, hh, 2 * inter);
                        Activation();
                        OpenBlas.Sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, t, h, inter, 1f, aa, inter, wdn, h, 0f, yy, h);
                    });
                    double best = gemm;
                    if (t == 1)
                    {
                        // y = Wᵀx for row-major W[K, N]: sgemv with Trans, M = K rows, N columns.
                        double gemv = Timing.MedianMs(() =>
                        {
                            OpenBlas.Sgemv(OpenBlas.RowMajor, OpenBlas.Trans, h, 2 * inter, 1f, wgu, 2 * inter, xx, 1, 0f, hh, 1);
                            Activation();
                            OpenBlas.Sgemv(OpenBlas.RowMajor, OpenBlas.Trans, inter, h, 1f, wdn, h, aa, 1, 0f, yy, 1);
                        });
                        Emit(c.Key + "-sgemm", gemm, c.Flops, c.WeightBytes * 2);
                        best = Math.Min(gemm, gemv);
                    }
                    Emit(c.Key, best, c.Flops, c.WeightBytes * 2);
                }
            }
            else
            {
                var w = Widen(RandomBf16((long)c.K * c.N, 4));
                var y = new float[c.T * c.N];
                fixed (float* px = x, pw = w, py = y)
                {
                    float* xx = px, ww = pw, yy = py;
                    int t = c.T, k = c.K, n = c.N;
                    double gemm = Timing.MedianMs(() =>
                        OpenBlas.Sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, t, n, k, 1f, xx, k, ww, n, 0f, yy, n));
                    double best = gemm;
                    if (t == 1)
                    {
                        double gemv = Timing.MedianMs(() =>
                            OpenBlas.Sgemv(OpenBlas.RowMajor, OpenBlas.Trans, k, n, 1f, ww, n, xx, 1, 0f, yy, 1));
                        Emit(c.Key + "-sgemm", gemm, c.Flops, c.WeightBytes * 2);
                        best = Math.Min(gemm, gemv);
                    }
                    Emit(c.Key, best, c.Flops, c.WeightBytes * 2);
                }
            }
        }
        return 0;
    }

    private sealed class ChildResult
    {
        public Dictionary<string, (double Ms, double Gflops, double GBps)> Results { get; } = [];
        public string Backend { get; set; } = "?";
        public string? Skipped { get; set; }
        public (double Copy, double Read)? Probe { get; set; }
    }

    private static ChildResult RunChild(string impl, int threads, string? coreType)
    {
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot locate the benchmark executable");
        var psi = new ProcessStartInfo { RedirectStandardOutput = true, UseShellExecute = false };
        psi.FileName = self;
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            psi.ArgumentList.Add(typeof(CpuFfnBenchmark).Assembly.Location);
        }
        foreach (var a in new[] { "cpu-ffn", "--impl", impl, "--threads", threads.ToString(CultureInfo.InvariantCulture) })
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        if (coreType is not null)
        {
            psi.Environment["OPENBLAS_CORETYPE"] = coreType;
        }
        else
        {
            psi.Environment.Remove("OPENBLAS_CORETYPE");
        }
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start a benchmark child process");
        var result = new ChildResult();
        string? line;
        while ((line = p.StandardOutput.ReadLine()) is not null)
        {
            var parts = line.Split(' ');
            switch (parts[0])
            {
                case "RESULT":
                    result.Results[parts[1]] = (Parse(parts[2]), Parse(parts[3]), Parse(parts[4]));
                    break;
                case "PROBE":
                    result.Probe = (Parse(parts[1]), Parse(parts[2]));
                    break;
                case "BACKEND":
                    result.Backend = line["BACKEND ".Length..];
                    break;
                case "SKIPPED":
                    result.Skipped = line["SKIPPED ".Length..];
                    break;
                default:
                    Console.WriteLine($"  [{impl}] {line}");
                    break;
            }
        }
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"child '{impl}' ({threads} threads) exited with code {p.ExitCode}");
        }
        return result;
    }

    private static double Parse(string s) => double.Parse(s, CultureInfo.InvariantCulture);

    /// <summary>Best (fastest) of several child runs: on a shared 2-vCPU machine, interference only ever slows a run.</summary>
    private static ChildResult Best(IReadOnlyList<ChildResult> runs)
    {
        var best = runs[0];
        foreach (var run in runs.Skip(1))
        {
            foreach (var (key, value) in run.Results)
            {
                if (!best.Results.TryGetValue(key, out var current) || value.Ms < current.Ms)
                {
                    best.Results[key] = value;
                }
            }
            if (run.Probe is { } p && (best.Probe is not { } bp || p.Copy > bp.Copy))
            {
                best.Probe = p;
            }
        }
        return best;
    }

    private static int RunWrapper(int[] threadCounts, int rounds)
    {
        Console.WriteLine($"cpu-ffn: {Environment.ProcessorCount} logical CPUs; ours = bf16 weights packed, fp32 FMA; bf16 = ours at --cpu-precision bf16; OpenBLAS = fp32 weights (same values).");
        Console.WriteLine($"Each implementation runs in its own process, {rounds} rounds interleaved; a figure is the best round's median over >= 1 s of repetitions.");
        foreach (int t in threadCounts)
        {
            string loadBefore = Timing.LoadAverage();
            var oursRuns = new List<ChildResult>();
            var bf16Runs = new List<ChildResult>();
            var defaultRuns = new List<ChildResult>();
            var skxRuns = new List<ChildResult>();
            for (int round = 0; round < Math.Max(1, rounds); round++)
            {
                oursRuns.Add(RunChild("ours", t, null));
                if (CpuKernelBackend.Bf16Unavailable is null)
                {
                    bf16Runs.Add(RunChild("ours-bf16", t, null));
                }
                defaultRuns.Add(RunChild("openblas", t, null));
                if (defaultRuns[^1].Skipped is null)
                {
                    skxRuns.Add(RunChild("openblas", t, "SKYLAKEX"));
                }
            }
            var ours = Best(oursRuns);
            var bf16 = bf16Runs.Count > 0 ? Best(bf16Runs) : null;
            var obDefault = Best(defaultRuns);
            var obSkx = skxRuns.Count > 0 ? Best(skxRuns) : obDefault;
            Console.WriteLine();
            Console.WriteLine($"== load average before/after: {loadBefore}/{Timing.LoadAverage()}");
            Console.WriteLine($"== threads = {t} | ours: {ours.Backend} | OpenBLAS: {obDefault.Skipped ?? obDefault.Backend} / OPENBLAS_CORETYPE=SKYLAKEX: {obSkx.Skipped ?? obSkx.Backend}");
            Console.WriteLine($"{"case",-24} {"ours ms",10} {"ours GF/s",10} {"OB dflt GF/s",13} {"OB SKX GF/s",12} {"ours/best OB",13} {"bf16 GF/s",10} {"bf16/best OB",13}");
            foreach (var c in s_cases)
            {
                var o = ours.Results[c.Key];
                string d = obDefault.Results.TryGetValue(c.Key, out var od) ? od.Gflops.ToString("F1", CultureInfo.InvariantCulture) : "skipped";
                string s = obSkx.Results.TryGetValue(c.Key, out var os) ? os.Gflops.ToString("F1", CultureInfo.InvariantCulture) : "skipped";
                double best = Math.Max(od.Gflops, os.Gflops);
                string ratio = best > 0 ? (o.Gflops / best).ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a";
                string bfGf = bf16 is null ? "n/a" : bf16.Results[c.Key].Gflops.ToString("F1", CultureInfo.InvariantCulture);
                string bfRatio = bf16 is not null && best > 0 ? (bf16.Results[c.Key].Gflops / best).ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a";
                Console.WriteLine(FormattableString.Invariant($"{c.Label,-24} {o.Ms,10:F3} {o.Gflops,10:F1} {d,13} {s,12} {ratio,13} {bfGf,10} {bfRatio,13}"));
            }
            if (obDefault.Skipped is null)
            {
                Console.WriteLine("  (T=1 OpenBLAS figures are the better of sgemv and sgemm; sgemm alone: " +
                    string.Join(", ", s_cases.Where(c => c.T == 1).Select(c =>
                        FormattableString.Invariant($"{c.Label} {Math.Max(obDefault.Results[c.Key + "-sgemm"].Gflops, obSkx.Results[c.Key + "-sgemm"].Gflops):F1}"))) + " GF/s)");
            }
            else
            {
                Console.WriteLine($"  OpenBLAS {obDefault.Skipped}");
            }
            Console.WriteLine(bf16 is null
                ? $"  bf16 precision not measured: {CpuKernelBackend.Bf16Unavailable}"
                : $"  bf16 = {bf16.Backend}: activations rounded to bf16, VDPBF16PS (the --cpu-precision bf16 mode)");
            if (ours.Probe is { } probe)
            {
                Console.WriteLine(FormattableString.Invariant(
                    $"  memory: copy {probe.Copy:F1} GB/s (bytes copied per s, 1 GiB buffer), read {probe.Read:F1} GB/s"));
                foreach (var c in s_cases.Where(c => c.T == 1))
                {
                    var o = ours.Results[c.Key];
                    Console.WriteLine(FormattableString.Invariant(
                        $"  {c.Label}: bf16 weights streamed at {o.GBps:F1} GB/s = {100 * o.GBps / probe.Copy:F0}% of copy, {100 * o.GBps / probe.Read:F0}% of read ({c.WeightBytes / 1048576.0:F0} MiB in {o.Ms:F3} ms)"));
                }
            }
        }
        return 0;
    }
}
