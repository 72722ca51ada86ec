using System.Diagnostics;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.GpuCheck;

/// <summary>
/// <c>Distributed.GpuCheck [--out DIR] [--quick] [--no-bench] [--deadline SECONDS] [--only fp8|devicepath|worker]</c>: on a CUDA machine, checks every kernel op
/// against the CPU backend, runs the golden fixtures (the vision ones too) end to end on the CUDA backend, benchmarks the expert GEMMs and a
/// decode step, writes DIR/report.md and DIR/report.json, and prints <c>GPU CHECK: N passed, N failed</c> last.
/// <c>--only fp8</c> runs issue #12's part alone (FP8 and KV-dtype parity, the FP8 goldens, and with benchmarks the
/// copy rate, the FP8 expert FFN and long-context decode per KV dtype), for a short device session. <c>--only devicepath</c>
/// runs the device-resident path's part alone (parity against the host-staged path, decode with it on and off on
/// tiny-maverick and on the synthetic maverick-h2048 stack with the share of the HBM floor). <c>--only worker</c> runs the
/// expert worker's compute from wire rows alone (device path = host path bitwise, then both timed at Maverick FP8 width).
/// Exit code 0 only when every check passed. Without a usable device it prints <c>GPU CHECK: skipped (reason)</c>
/// and exits 0.
/// </summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        string? outDir = null;
        bool quick = false;
        bool bench = true;
        bool fp8Only = false;
        bool devicePathOnly = false;
        bool workerOnly = false;
        double deadline = 270;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--out" when i + 1 < args.Length:
                    outDir = args[++i];
                    break;
                case "--quick":
                    quick = true;
                    break;
                case "--no-bench":
                    bench = false;
                    break;
                case "--only" when i + 1 < args.Length && args[i + 1] == "fp8":
                    fp8Only = true;
                    i++;
                    break;
                case "--only" when i + 1 < args.Length && args[i + 1] == "devicepath":
                    devicePathOnly = true;
                    i++;
                    break;
                case "--only" when i + 1 < args.Length && args[i + 1] == "worker":
                    workerOnly = true;
                    i++;
                    break;
                case "--deadline" when i + 1 < args.Length && double.TryParse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture, out double d) && d > 0:
                    deadline = d;
                    i++;
                    break;
                default:
                    Console.Error.WriteLine($"unknown or incomplete argument '{args[i]}'. Usage: Distributed.GpuCheck [--out DIR] [--quick] [--no-bench] [--deadline SECONDS] [--only fp8|devicepath|worker]");
                    return 2;
            }
        }
        var report = new CheckReport();
        Console.WriteLine($"Distributed.GpuCheck: {Environment.OSVersion}, .NET {Environment.Version}, {Environment.ProcessorCount} cores, out={outDir ?? "(none)"}, quick={quick}");
        using var watchdog = StartWatchdog(report, outDir, deadline);
        try
        {
            return Run(report, outDir, quick, bench, deadline, fp8Only, devicePathOnly, workerOnly);
        }
        catch (Exception e)
        {
            report.Add(new CheckResult("GPU check", "unexpected failure", CheckStatus.Fail, e.ToString(), 0));
            report.Write(outDir);
            Console.WriteLine(report.SummaryLine());
            return 1;
        }
    }

    private static int Run(CheckReport report, string? outDir, bool quick, bool bench, double deadline, bool fp8Only, bool devicePathOnly, bool workerOnly)
    {
        var sw = Stopwatch.StartNew();
        var started = sw;
        if (!CudaKernelBackend.TryCreate(0, out CudaKernelBackend? split, out string reason) || split is null)
        {
            int devices = CudaKernelBackend.CountDevices(out _);
            if (devices > 0)
            {
                // A device is there, so this is a failure of the backend (library, NVRTC log, probe), never a skip.
                report.Add(new CheckResult("Backend selection", "CudaKernelBackend on device 0", CheckStatus.Fail,
                    $"{devices} device(s) present but the backend did not start: {reason}", sw.Elapsed.TotalSeconds));
                report.Write(outDir);
                Console.WriteLine(report.SummaryLine());
                return 1;
            }
            report.SkipReason = reason.ReplaceLineEndings(" ");
            Console.WriteLine($"no usable CUDA device: {reason}");
            report.Write(outDir);
            Console.WriteLine(report.SummaryLine());
            return 0;
        }
        using (split)
        {
            CudaDeviceInfo info = split.Info;
            report.Info("device", $"{info.Name} (ordinal {info.Ordinal})");
            report.Info("compute capability", $"{info.ComputeCapabilityMajor}.{info.ComputeCapabilityMinor}, {info.MultiprocessorCount} SMs");
            report.Info("memory", $"{info.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB");
            report.Info("driver (CUDA version supported)", $"{info.DriverVersion / 1000}.{info.DriverVersion % 1000 / 10} ({info.DriverLibrary})");
            report.Info("cuBLAS", $"{info.CublasVersion} ({info.CublasLibrary})");
            report.Info("NVRTC", $"{info.NvrtcVersion} ({info.NvrtcLibrary})");
            report.Info("kernels", info.KernelImage);
            report.Info("grouped GEMM path", split.GroupedGemmPath);
            report.Info("backend start-up", $"{sw.Elapsed.TotalSeconds:F2} s (NVRTC compile + grouped probe)");
            report.Info("summary", split.Describe());

            DeviceChecks.Run(report);
            using CpuKernelBackend cpu = new();
            report.Info("CPU reference", $"{cpu.Name}: {cpu.Capabilities.Device}");
            if (fp8Only)
            {
                return RunFp8Only(report, outDir, quick, bench, cpu, split);
            }
            if (workerOnly)
            {
                WorkerWireChecks.Parity(report, split);
                if (bench)
                {
                    report.BenchSection("Worker expert compute", () => WorkerWireChecks.Bench(report, split, quick));
                }
                report.Write(outDir);
                Console.WriteLine(report.SummaryLine());
                return report.Failed == 0 ? 0 : 1;
            }
            if (devicePathOnly)
            {
                return RunDevicePathOnly(report, outDir, quick, bench, cpu, split);
            }
            CudaKernelBackend? fast = Create(report, "Fast precision backend", new CudaBackendOptions { Precision = CudaPrecision.Fast });
            CudaKernelBackend? perGroup = Create(report, "PerGroup grouped-GEMM backend", new CudaBackendOptions { GroupedGemm = CudaGroupedGemm.PerGroup });
            CudaKernelBackend? padded = Create(report, "PaddedBatched grouped-GEMM backend", new CudaBackendOptions { GroupedGemm = CudaGroupedGemm.PaddedBatched });
            try
            {
                report.Check("Backend selection", "KernelBackendFactory Auto picks CUDA", () =>
                {
                    var log = new StringWriter();
                    using IKernelBackend b = KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Auto }, log);
                    return (b is CudaKernelBackend, $"{b.Name}; log: {log.ToString().Trim()}");
                });
                report.Write(outDir);

                OpParity.Run(report, cpu, split, fast, perGroup, padded);
                Fp8Checks.Parity(report, cpu, split);
                WorkerWireChecks.Parity(report, split);
                VisionChecks.RunOps(report, cpu, split, quick);
                report.Write(outDir);

                string? fixtures = GoldenRuns.FindFixturesRoot();
                const string goldenSection = "Golden fixtures on CUDA (Split precision)";
                if (fixtures is null)
                {
                    report.Add(new CheckResult(goldenSection, "fixtures", CheckStatus.Fail, $"tests/fixtures not found above {AppContext.BaseDirectory} or {Environment.CurrentDirectory}", 0));
                }
                else
                {
                    GoldenRuns.Run(report, goldenSection, split, fixtures);
                    VisionChecks.RunGolden(report, "Vision golden (tiny-maverick-mm golden_vision.json) on CUDA", split, cpu, fixtures);
                    GoldenRuns.RunScheduled(report, "Golden fixtures through the scheduler, paged KV in device memory", split, fixtures);
                    GoldenRuns.RunFp8(report, "FP8 goldens on CUDA (tiny-maverick-fp8; issue #12)", split, fixtures);
                    DevicePathChecks.Parity(report, split, fixtures);
                    DevicePathChecks.GraphsParity(report, split, fixtures);
                    if (fast is not null)
                    {
                        report.BenchSection("Golden fixtures, Fast precision", () =>
                            GoldenRuns.Measure(report, "Golden fixtures on CUDA, Fast precision (information only)", fast, fixtures));
                    }
                }
                report.Write(outDir);

                if (!bench)
                {
                    report.Write(outDir);
                    Console.WriteLine(report.SummaryLine());
                    return report.Failed == 0 ? 0 : 1;
                }
                double copy = 0;
                report.BenchSection("Device-to-device copy", () => copy = GpuBenchmarks.CopyBandwidth(report, split, quick));
                report.BenchSection("Expert GEMM", () => GpuBenchmarks.ExpertGemm(report, split, copy, quick));
                report.BenchSection("FP8 expert FFN", () => Fp8Checks.ExpertFfnBench(report, split, copy, quick));
                report.BenchSection("Worker expert compute", () => WorkerWireChecks.Bench(report, split, quick));
                report.Write(outDir);
                var precisions = new List<(string, CudaKernelBackend)> { ("split", split) };
                if (fast is not null)
                {
                    precisions.Add(("fast", fast));
                }
                var ffnBackends = new List<(string, CudaKernelBackend)>(precisions);
                if (perGroup is not null)
                {
                    ffnBackends.Add(("split per-group", perGroup));
                }
                if (padded is not null)
                {
                    ffnBackends.Add(("split padded-batched", padded));
                }
                report.BenchSection("Backend FFN", () => GpuBenchmarks.BackendFfn(report, ffnBackends, quick));
                report.BenchSection("Batch invariance", () => GpuBenchmarks.BatchInvariance(report, precisions));
                report.Write(outDir);
                if (fixtures is not null)
                {
                    report.BenchSection("Decode step", () => DevicePathChecks.TinyDecode(report, split, cpu, fixtures, quick));
                }
                report.Write(outDir);
                if (!quick && started.Elapsed.TotalSeconds < deadline - 190)
                {
                    report.BenchSection("Device path on synthetic maverick-h2048", () => DevicePathChecks.SyntheticDecode(report, split, copy));
                    report.Write(outDir);
                }
                if (!quick && started.Elapsed.TotalSeconds < deadline - 120)
                {
                    report.BenchSection("Engine on synthetic maverick-h2048", () => GoldenRuns.SyntheticEngineBench(report, split, cpu));
                    report.Write(outDir);
                }
                if (!quick && started.Elapsed.TotalSeconds < deadline - 90)
                {
                    report.BenchSection("Long-context decode", () => GoldenRuns.LongContextDecodeBench(report, split, 4096));
                    report.Write(outDir);
                }
                if (!quick && started.Elapsed.TotalSeconds < deadline - 60)
                {
                    report.BenchSection("Concurrent decode", () => GoldenRuns.ConcurrentDecodeBench(report, split, 32, 512));
                }
            }
            finally
            {
                fast?.Dispose();
                perGroup?.Dispose();
                padded?.Dispose();
            }
        }
        report.Write(outDir);
        Console.WriteLine(report.SummaryLine());
        return report.Failed == 0 ? 0 : 1;
    }

    /// <summary><c>--only fp8</c>: issue #12's checks and benchmarks alone.</summary>
    private static int RunFp8Only(CheckReport report, string? outDir, bool quick, bool bench, CpuKernelBackend cpu, CudaKernelBackend split)
    {
        Fp8Checks.Parity(report, cpu, split);
        report.Write(outDir);
        string? fixtures = GoldenRuns.FindFixturesRoot();
        if (fixtures is not null)
        {
            GoldenRuns.RunFp8(report, "FP8 goldens on CUDA (tiny-maverick-fp8; issue #12)", split, fixtures);
            report.Write(outDir);
        }
        if (bench)
        {
            double copy = 0;
            report.BenchSection("Device-to-device copy", () => copy = GpuBenchmarks.CopyBandwidth(report, split, quick));
            report.BenchSection("FP8 expert FFN", () => Fp8Checks.ExpertFfnBench(report, split, copy, quick));
            if (!quick)
            {
                report.BenchSection("Long-context decode", () => GoldenRuns.LongContextDecodeBench(report, split, 4096));
            }
        }
        report.Write(outDir);
        Console.WriteLine(report.SummaryLine());
        return report.Failed == 0 ? 0 : 1;
    }

    /// <summary><c>--only devicepath</c>: the device-resident path's parity and decode benchmarks alone (issue #12).</summary>
    private static int RunDevicePathOnly(CheckReport report, string? outDir, bool quick, bool bench, CpuKernelBackend cpu, CudaKernelBackend split)
    {
        string? fixtures = GoldenRuns.FindFixturesRoot();
        if (fixtures is null)
        {
            report.Add(new CheckResult("Device-resident path vs host-staged path (issue #12)", "fixtures", CheckStatus.Fail, "tests/fixtures not found", 0));
        }
        else
        {
            DevicePathChecks.Parity(report, split, fixtures);
            DevicePathChecks.GraphsParity(report, split, fixtures);
            report.Write(outDir);
            if (bench)
            {
                report.BenchSection("Decode step", () => DevicePathChecks.TinyDecode(report, split, cpu, fixtures, quick));
            }
        }
        if (bench && !quick)
        {
            double copy = 0;
            report.BenchSection("Device-to-device copy", () => copy = GpuBenchmarks.CopyBandwidth(report, split, quick));
            report.BenchSection("Device path on synthetic maverick-h2048", () => DevicePathChecks.SyntheticDecode(report, split, copy));
        }
        report.Write(outDir);
        Console.WriteLine(report.SummaryLine());
        return report.Failed == 0 ? 0 : 1;
    }

    private static CudaKernelBackend? Create(CheckReport report, string name, CudaBackendOptions options)
    {
        CudaKernelBackend? backend = null;
        report.Check("Backend selection", name, () =>
        {
            bool ok = CudaKernelBackend.TryCreate(0, options, out backend, out string why);
            return (ok, ok ? backend!.Describe() : why);
        });
        return backend;
    }

    /// <summary>Writes the report and exits if the run outlives <paramref name="seconds"/>, so a hang still leaves a report.</summary>
    private static Timer StartWatchdog(CheckReport report, string? outDir, double seconds) =>
        new(_ =>
        {
            report.Add(new CheckResult("GPU check", "deadline", CheckStatus.Fail, $"the check ran past its {seconds} s deadline and was stopped", seconds));
            try
            {
                report.Write(outDir);
            }
            finally
            {
                Console.WriteLine(report.SummaryLine());
                Environment.Exit(3);
            }
        }, null, TimeSpan.FromSeconds(seconds), Timeout.InfiniteTimeSpan);
}
