using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Distributed.Checkpoint;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;

namespace Distributed.Benchmarks;

/// <summary>
/// <c>cpu-ffn</c>: SwiGLU expert FFN at Maverick width and dense matmuls, ours with bf16 weights (fp32 FMA), ours with
/// FP8 weights (the same values quantized per output channel, decoded in registers), ours at the bf16 precision where
/// the CPU has AVX512-BF16, and OpenBLAS fp32, each implementation in its own process (two spinning thread pools in one
/// process on 2 vCPUs ruin both; STACK-NOTES pitfall 10), plus memory-bandwidth baselines. On an AVX-512 machine every
/// implementation also runs with AVX-512 turned off (<c>DOTNET_EnableAVX512=0</c>, OpenBLAS <c>OPENBLAS_CORETYPE=HASWELL</c>),
/// which measures the AVX2 paths in the same run. OpenBLAS's core type follows the CPU's flags (SKYLAKEX only with
/// AVX-512, HASWELL with AVX2, the library's own choice otherwise), and a child that fails (a baseline that dies with
/// SIGILL, a missing library) is reported in its column instead of aborting the benchmark.
/// </summary>
internal static unsafe class CpuFfnBenchmark
{
    private sealed record Case(string Key, string Label, bool Ffn, int T, int K, int N, double Flops, long WeightBytes);

    private static Case[] s_cases = BuildCases();

    /// <summary>The <c>--cases</c> filter of this run, passed on to the child processes.</summary>
    private static string? s_caseFilter;

    /// <summary><c>--clock wall|cpu</c>: what the figures time (see <see cref="Timing.UseCpuTime"/>), passed on to the children.</summary>
    private static string s_clock = "wall";

    private static Case[] BuildCases()
    {
        var list = new List<Case>();
        foreach (int t in new[] { 1, 8, 16, 128 })
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
        s_clock = Option(args, "--clock") ?? "wall";
        if (s_clock is not ("wall" or "cpu"))
        {
            return Usage($"--clock '{s_clock}': wall | cpu");
        }
        Timing.UseCpuTime = s_clock == "cpu";
        s_caseFilter = Option(args, "--cases");
        if (s_caseFilter is { } filter)
        {
            // Comma-separated substrings of the case keys (e.g. "T128" or "ffn5120x8192-T8,dense"): a focused run.
            var wanted = filter.Split(',', StringSplitOptions.RemoveEmptyEntries);
            s_cases = [.. s_cases.Where(c => wanted.Any(wnt => c.Key.Contains(wnt, StringComparison.Ordinal)))];
            if (s_cases.Length == 0)
            {
                return Usage($"--cases '{filter}' matches no case key ({string.Join(", ", BuildCases().Select(c => c.Key))})");
            }
        }
        string threadList = Option(args, "--threads") ?? $"1,{Environment.ProcessorCount}";
        var threads = threadList.Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).Distinct().ToArray();
        if (threads.Any(t => t < 1))
        {
            Console.Error.WriteLine("--threads: every value must be >= 1");
            return 2;
        }
        return impl switch
        {
            "ours" => RunOurs(threads[0], CpuMatMulPrecision.Fp32, fp8: false),
            "ours-fp8" => RunOurs(threads[0], CpuMatMulPrecision.Fp32, fp8: true),
            "ours-bf16" => RunOurs(threads[0], CpuMatMulPrecision.Bf16, fp8: false),
            "openblas" => RunOpenBlas(threads[0]),
            "both" => RunWrapper(threads, int.Parse(Option(args, "--rounds") ?? "2", CultureInfo.InvariantCulture), Option(args, "--levels")),
            _ => Usage($"unknown --impl '{impl}' (ours | ours-fp8 | ours-bf16 | openblas | both)"),
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

    private static int RunOurs(int threads, CpuMatMulPrecision precision, bool fp8)
    {
        if (precision == CpuMatMulPrecision.Fp32 && !fp8)
        {
            var (copy, read) = MemoryProbe.Measure(threads);
            Console.WriteLine(FormattableString.Invariant($"PROBE {copy:F2} {read:F2}"));
            Console.WriteLine(FormattableString.Invariant($"PEAK {FmaPeak.Measure():F2}"));
        }
        using var backend = new CpuKernelBackend(threads, precision);
        Console.WriteLine($"BACKEND {backend.Name}{(fp8 ? " fp8 weights" : "")} | {backend.Capabilities.Device}");
        // bf16 bits [in, out] → the weight: as bf16, or quantized per output channel to FP8 (1 byte per weight).
        IWeightMatrix Weight(ushort[] bits, int inFeatures, int outFeatures, WeightLayout layout)
        {
            if (!fp8)
            {
                return backend.CreateWeight(bits, inFeatures, outFeatures, layout);
            }
            var (codes, scales) = ExpertWeights.QuantizeColumns(bits, inFeatures, outFeatures);
            return backend.CreateFp8Weight(codes, scales, inFeatures, outFeatures, WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
        }
        foreach (var c in s_cases)
        {
            var x = RandomFloats(c.T * c.K, 1);
            long weightBytes = fp8 ? c.WeightBytes / 2 : c.WeightBytes;
            if (c.Ffn)
            {
                using var gu = Weight(RandomBf16((long)c.K * 2 * c.N, 2), c.K, 2 * c.N, WeightLayout.InOut);
                using var dn = Weight(RandomBf16((long)c.N * c.K, 3), c.N, c.K, WeightLayout.InOut);
                var y = new float[c.T * c.K];
                double ms = Timing.MedianMs(() => backend.SwiGluFfn(x, c.T, gu, dn, y));
                Emit(c.Key, ms, c.Flops, weightBytes);
            }
            else
            {
                using var w = Weight(RandomBf16((long)c.K * c.N, 4), c.K, c.N, fp8 ? WeightLayout.InOut : WeightLayout.OutIn);
                var y = new float[c.T * c.N];
                double ms = Timing.MedianMs(() => backend.MatMul(x, c.T, w, y));
                Emit(c.Key, ms, c.Flops, weightBytes);
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
        public double? Peak { get; set; }
    }

    /// <summary>One SIMD configuration the benchmark measures: the machine's own, or AVX-512 turned off.</summary>
    private sealed record Level(string Name, bool ForceAvx2, string? OpenBlasCore);

    /// <summary>
    /// The configurations to measure: the machine's widest level, and on an AVX-512 machine the AVX2 paths too. OpenBLAS's
    /// core type follows the flags: SKYLAKEX needs AVX-512 (on an AVX2-only CPU it dies with SIGILL), HASWELL needs
    /// AVX2+FMA; without either the library picks its own.
    /// </summary>
    private static List<Level> Levels()
    {
        bool avx512 = Vector512.IsHardwareAccelerated && Avx512F.IsSupported;
        bool avx2 = Avx2.IsSupported && Fma.IsSupported;
        var levels = new List<Level> { new(avx512 ? "avx512" : avx2 ? "avx2" : "scalar", false, avx512 ? "SKYLAKEX" : avx2 ? "HASWELL" : null) };
        if (avx512 && avx2)
        {
            levels.Add(new Level("avx2 (AVX-512 off)", true, "HASWELL"));
        }
        return levels;
    }

    /// <summary>A child's figures, or a result that says why the child did not give any (it never throws for a failed child).</summary>
    private static ChildResult RunChildOrFailure(string impl, int threads, string? coreType, bool forceAvx2)
    {
        try
        {
            return RunChild(impl, threads, coreType, forceAvx2);
        }
        catch (InvalidOperationException ex)
        {
            return new ChildResult { Skipped = $"failed: {ex.Message}" };
        }
    }

    private static ChildResult RunChild(string impl, int threads, string? coreType, bool forceAvx2)
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
        if (s_caseFilter is not null)
        {
            psi.ArgumentList.Add("--cases");
            psi.ArgumentList.Add(s_caseFilter);
        }
        psi.ArgumentList.Add("--clock");
        psi.ArgumentList.Add(s_clock);
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        if (forceAvx2)
        {
            // The runtime then reports no AVX-512: Vector512 is not accelerated and the backend takes its Vector256 paths.
            psi.Environment["DOTNET_EnableAVX512"] = "0";
        }
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
                case "PEAK":
                    result.Peak = Parse(parts[1]);
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
            string why = p.ExitCode == 132 ? " (SIGILL: an instruction this CPU lacks)" : "";
            throw new InvalidOperationException($"child '{impl}' ({threads} threads{(coreType is null ? "" : $", OPENBLAS_CORETYPE={coreType}")}) exited with code {p.ExitCode}{why}");
        }
        return result;
    }

    private static double Parse(string s) => double.Parse(s, CultureInfo.InvariantCulture);

    /// <summary>Best (fastest) of several child runs: on a shared 2-vCPU machine, interference only ever slows a run.</summary>
    private static ChildResult Best(IReadOnlyList<ChildResult> runs)
    {
        var best = runs.FirstOrDefault(r => r.Skipped is null) ?? runs[0];
        foreach (var run in runs.Where(r => r != best && r.Skipped is null))
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
            if (run.Peak is { } peak && (best.Peak is not { } bestPeak || peak > bestPeak))
            {
                best.Peak = peak;
            }
        }
        return best;
    }

    private static int RunWrapper(int[] threadCounts, int rounds, string? levelFilter)
    {
        var levels = Levels();
        if (levelFilter is not null)
        {
            // --levels avx2: only the configurations whose name starts with one of the given names.
            var wanted = levelFilter.Split(',', StringSplitOptions.RemoveEmptyEntries);
            levels = [.. levels.Where(l => wanted.Any(wnt => l.Name.StartsWith(wnt, StringComparison.Ordinal)))];
            if (levels.Count == 0)
            {
                return Usage($"--levels '{levelFilter}' matches none of: {string.Join(", ", Levels().Select(l => l.Name))}");
            }
        }
        Console.WriteLine($"cpu-ffn: {Environment.ProcessorCount} logical CPUs, levels {string.Join(", ", levels.Select(l => l.Name))}; ours = bf16 weights packed, fp32 FMA;");
        Console.WriteLine("fp8 = ours with the same weights quantized per output channel to FP8 E4M3 (1 byte each, decoded in registers, weight-only);");
        Console.WriteLine("bf16 = ours at --cpu-precision bf16 (AVX512-BF16 only); OpenBLAS = fp32 weights (same values).");
        Console.WriteLine($"Each implementation runs in its own process, {rounds} rounds interleaved; a figure is the best round's median over >= 1 s of repetitions ({(s_clock == "cpu" ? "process CPU time, not wall time" : "wall time")}).");
        foreach (int t in threadCounts)
        {
            foreach (var level in levels)
            {
                string loadBefore = Timing.LoadAverage();
                var oursRuns = new List<ChildResult>();
                var fp8Runs = new List<ChildResult>();
                var bf16Runs = new List<ChildResult>();
                var obRuns = new List<ChildResult>();
                bool bf16Available = !level.ForceAvx2 && CpuKernelBackend.Bf16Unavailable is null;
                for (int round = 0; round < Math.Max(1, rounds); round++)
                {
                    oursRuns.Add(RunChildOrFailure("ours", t, null, level.ForceAvx2));
                    fp8Runs.Add(RunChildOrFailure("ours-fp8", t, null, level.ForceAvx2));
                    if (bf16Available)
                    {
                        bf16Runs.Add(RunChildOrFailure("ours-bf16", t, null, level.ForceAvx2));
                    }
                    obRuns.Add(RunChildOrFailure("openblas", t, level.OpenBlasCore, level.ForceAvx2));
                }
                var ours = Best(oursRuns);
                var fp8 = Best(fp8Runs);
                var bf16 = bf16Runs.Count > 0 ? Best(bf16Runs) : null;
                var ob = Best(obRuns);
                Console.WriteLine();
                Console.WriteLine($"== load average before/after: {loadBefore}/{Timing.LoadAverage()}");
                Console.WriteLine($"== threads = {t}, {level.Name} | ours: {ours.Skipped ?? ours.Backend} | OpenBLAS (OPENBLAS_CORETYPE={level.OpenBlasCore ?? "(library default)"}): {ob.Skipped ?? ob.Backend}");
                Console.WriteLine($"{"case",-24} {"ours ms",10} {"ours GF/s",10} {"fp8 ms",9} {"fp8 GF/s",9} {"fp8/ours",9} {"OB GF/s",9} {"ours/OB",8} {"fp8/OB",8} {"bf16 GF/s",10}");
                foreach (var c in s_cases)
                {
                    string Cell((double Ms, double Gflops, double GBps)? v, bool ms) =>
                        v is { } r ? (ms ? r.Ms : r.Gflops).ToString(ms ? "F3" : "F1", CultureInfo.InvariantCulture) : "n/a";
                    string Ratio((double Ms, double Gflops, double GBps)? a, (double Ms, double Gflops, double GBps)? b) =>
                        a is { } x && b is { } y && y.Gflops > 0 ? (x.Gflops / y.Gflops).ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a";
                    var o = Get(ours, c.Key);
                    var f = Get(fp8, c.Key);
                    var b = Get(ob, c.Key);
                    var bf = bf16 is null ? null : Get(bf16, c.Key);
                    Console.WriteLine(FormattableString.Invariant(
                        $"{c.Label,-24} {Cell(o, true),10} {Cell(o, false),10} {Cell(f, true),9} {Cell(f, false),9} {Ratio(f, o),9} {Cell(b, false),9} {Ratio(o, b),8} {Ratio(f, b),8} {Cell(bf, false),10}"));
                }
                if (ob.Skipped is null)
                {
                    Console.WriteLine("  (T=1 OpenBLAS figures are the better of sgemv and sgemm; sgemm alone: " +
                        string.Join(", ", s_cases.Where(c => c.T == 1 && ob.Results.ContainsKey(c.Key + "-sgemm")).Select(c =>
                            FormattableString.Invariant($"{c.Label} {ob.Results[c.Key + "-sgemm"].Gflops:F1}"))) + " GF/s)");
                }
                else
                {
                    Console.WriteLine($"  OpenBLAS {ob.Skipped}");
                }
                foreach (var (name, run) in new[] { ("ours", ours), ("fp8", fp8) })
                {
                    if (run.Skipped is not null)
                    {
                        Console.WriteLine($"  {name}: {run.Skipped}");
                    }
                }
                Console.WriteLine(bf16 is not null
                    ? $"  bf16 = {bf16.Backend}: activations rounded to bf16, VDPBF16PS (the --cpu-precision bf16 mode)"
                    : $"  bf16 precision not measured: {(level.ForceAvx2 ? "AVX-512 is off" : CpuKernelBackend.Bf16Unavailable)}");
                if (ours.Peak is { } fmaPeak)
                {
                    // The compute bound: at T=128 neither implementation can pass the FMA throughput of one core.
                    Console.WriteLine(FormattableString.Invariant(
                        $"  FMA peak ({(level.ForceAvx2 || !Vector512.IsHardwareAccelerated ? "ymm" : "zmm")}, 12 chains, per thread) {fmaPeak:F1} GF/s; share of it at T=128: ") +
                        string.Join(", ", s_cases.Where(c => c.T == 128).Select(c => FormattableString.Invariant(
                            $"{c.Label} ours {Share(Get(ours, c.Key), fmaPeak)} OpenBLAS {Share(Get(ob, c.Key), fmaPeak)}"))));
                }
                if (ours.Probe is { } probe)
                {
                    Console.WriteLine(FormattableString.Invariant(
                        $"  memory: copy {probe.Copy:F1} GB/s (bytes copied per s, 1 GiB buffer), read {probe.Read:F1} GB/s"));
                    foreach (var c in s_cases.Where(c => c.T == 1))
                    {
                        if (Get(ours, c.Key) is { } o)
                        {
                            string fp8Line = Get(fp8, c.Key) is { } f
                                ? FormattableString.Invariant($"; fp8 weights {f.GBps:F1} GB/s = {100 * f.GBps / probe.Read:F0}% of read, {o.Ms / f.Ms:F2}x the bf16 speed")
                                : "";
                            Console.WriteLine(FormattableString.Invariant(
                                $"  {c.Label}: bf16 weights streamed at {o.GBps:F1} GB/s = {100 * o.GBps / probe.Copy:F0}% of copy, {100 * o.GBps / probe.Read:F0}% of read ({c.WeightBytes / 1048576.0:F0} MiB in {o.Ms:F3} ms){fp8Line}"));
                        }
                    }
                }
            }
        }
        return 0;
    }

    private static string Share((double Ms, double Gflops, double GBps)? v, double peak) =>
        v is { } r ? FormattableString.Invariant($"{100 * r.Gflops / peak:F0}%") : "n/a";

    private static (double Ms, double Gflops, double GBps)? Get(ChildResult run, string key) =>
        run.Skipped is null && run.Results.TryGetValue(key, out var v) ? v : null;
}
