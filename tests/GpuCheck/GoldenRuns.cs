using System.Diagnostics;
using System.Text.Json;
using Distributed.Checkpoint;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;

namespace Distributed.GpuCheck;

/// <summary>
/// The golden fixtures end to end on a backend through the coordinator's <see cref="Llama4Engine"/> (experts in-process).
/// Pass criteria (each fixture's golden.json): last_logits max |diff| ≤ tolerances.last_logits_max_abs, argmax at every
/// prompt position exact, routing (experts top-1 per MoE layer) exact, the greedy new tokens exact. The goldens are
/// checked with an fp32 KV cache (the golden precision; CUDA's default is bf16, measured separately).
/// </summary>
internal static class GoldenRuns
{
    public static readonly string[] Fixtures = ["tiny-maverick", "tiny-scout", "tiny-maverick-mm"];

    /// <summary>Walks up from the executable and the working directory to the folder holding tests/fixtures.</summary>
    public static string? FindFixturesRoot()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "tests", "fixtures");
                if (Directory.Exists(Path.Combine(candidate, "tiny-maverick")))
                {
                    return candidate;
                }
            }
        }
        return null;
    }

    public static void Run(CheckReport report, string section, IKernelBackend backend, string fixturesRoot)
    {
        foreach (string fixture in Fixtures)
        {
            string dir = Path.Combine(fixturesRoot, fixture);
            report.Check(section, fixture, () => RunFixture(backend, dir));
        }
    }

    /// <summary>
    /// Every prompt of each fixture (the long-context one included: chunked prefill across 8192-position chunks) through
    /// the continuous-batching scheduler, whose paged KV cache lives in the backend's block store (device memory on
    /// CUDA): the greedy tokens must be the golden ones. All prompts of a fixture run concurrently in one batch.
    /// </summary>
    public static void RunScheduled(CheckReport report, string section, IKernelBackend backend, string fixturesRoot)
    {
        foreach (string fixture in new[] { "tiny-maverick", "tiny-scout", "tiny-maverick-long" })
        {
            string dir = Path.Combine(fixturesRoot, fixture);
            if (!Directory.Exists(dir))
            {
                continue;
            }
            report.Check(section, fixture, () => RunScheduledFixture(backend, dir));
        }
    }

    private static (bool, string) RunScheduledFixture(IKernelBackend backend, string dir)
    {
        using JsonDocument golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json")));
        var prompts = golden.RootElement.GetProperty("prompts").EnumerateArray()
            .Select(p => (Name: p.GetProperty("name").GetString() ?? "?", Ids: Ints(p.GetProperty("input_ids")), New: Ints(p.GetProperty("greedy").GetProperty("new_tokens"))))
            .ToList();
        using Llama4Engine engine = Llama4Engine.Load(dir, backend);
        var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions
        {
            PrefillChunkTokens = 512, MaxBatchTokens = 1024, KvMemoryBytes = 512L << 20, KvDType = KvCacheDType.Fp32,
        });
        try
        {
            string store = scheduler.KvPool.Store.Location;
            var results = Task.WhenAll(prompts.Select(async (p, i) =>
            {
                var tokens = new List<int>();
                await foreach (var t in scheduler.GenerateAsync(new GenerationRequest($"golden-{i}", p.Ids, p.New.Length, SamplingParams.Greedy), CancellationToken.None))
                {
                    tokens.Add(t.TokenId);
                }
                return tokens.ToArray();
            })).GetAwaiter().GetResult();
            var problems = prompts.Select((p, i) => results[i].SequenceEqual(p.New) ? null
                : $"{p.Name}: greedy tokens [{string.Join(',', results[i])}] vs golden [{string.Join(',', p.New)}]").OfType<string>().ToList();
            string summary = $"{prompts.Count} prompts of {string.Join('/', prompts.Select(p => p.Ids.Length))} tokens concurrently, KV blocks in {store}";
            return (problems.Count == 0 && store != "host", problems.Count == 0 ? $"{summary}; greedy tokens exact" : $"{summary}; {string.Join("; ", problems)}");
        }
        finally
        {
            scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    /// <summary>
    /// Decode at long context through the scheduler on the maverick-h2048 synthetic model: one sequence, a
    /// <paramref name="promptTokens"/>-token prompt, then 32 greedy tokens, with the KV blocks in device memory (attention
    /// reads them in place) and in host memory (the previous path: visible keys gathered and uploaded per call), same run.
    /// </summary>
    public static void LongContextDecodeBench(CheckReport report, IKernelBackend cuda, int promptTokens)
    {
        string dir = SyntheticDir();
        var values = new Dictionary<string, double>();
        using Llama4Engine engine = Llama4Engine.Load(dir, cuda);
        var rng = new Random(11);
        int[] prompt = Enumerable.Range(0, promptTokens).Select(_ => rng.Next(engine.Config.VocabSize)).ToArray();
        foreach (var (label, device, dtype) in new[]
        {
            ("device KV", true, KvCacheDType.Fp32), ("host KV", false, KvCacheDType.Fp32), ("device KV again", true, KvCacheDType.Fp32),
            ("device bf16 KV", true, KvCacheDType.Bf16), ("device fp8 KV", true, KvCacheDType.Fp8E4M3),
        })
        {
            var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions
            {
                PrefillChunkTokens = 1024, MaxBatchTokens = 1024, KvMemoryBytes = 2L << 30, BackendKvStore = device, KvDType = dtype,
            });
            try
            {
                var arrivals = new List<long>();
                var sw = Stopwatch.StartNew();
                Task.Run(async () =>
                {
                    await foreach (var _ in scheduler.GenerateAsync(new GenerationRequest(label, prompt, 33, SamplingParams.Greedy), CancellationToken.None))
                    {
                        arrivals.Add(sw.ElapsedTicks);
                    }
                }).GetAwaiter().GetResult();
                double prefill = arrivals[0] / (double)Stopwatch.Frequency;
                double decode = (arrivals[^1] - arrivals[0]) / (double)Stopwatch.Frequency / (arrivals.Count - 1);
                values[$"{label} prefill tok/s"] = promptTokens / prefill;
                values[$"{label} decode tok/s"] = 1 / decode;
            }
            finally
            {
                scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
        values["decode device/host"] = values["device KV again decode tok/s"] / values["host KV decode tok/s"];
        values["decode bf16/fp32 KV"] = values["device bf16 KV decode tok/s"] / values["device KV again decode tok/s"];
        values["decode fp8/fp32 KV"] = values["device fp8 KV decode tok/s"] / values["device KV again decode tok/s"];
        report.Bench("Long-context decode through the scheduler, synthetic maverick-h2048", $"{promptTokens}-token prompt, 32 decode steps, 1 sequence", values,
            "host KV = the visible keys gathered on the host and uploaded for every attention call; device KV in fp32 unless named (--kv-dtype)");
    }

    /// <summary>
    /// Many sequences decoding together through the scheduler on maverick-h2048: <paramref name="sequences"/> prompts of
    /// <paramref name="promptTokens"/> tokens, 32 greedy tokens each. Decode rate = tokens after the last sequence's first
    /// token over the time from then to the end. Device KV and host KV (one attention call per layer for all sequences in
    /// both), in one run.
    /// </summary>
    public static void ConcurrentDecodeBench(CheckReport report, IKernelBackend cuda, int sequences, int promptTokens)
    {
        using Llama4Engine engine = Llama4Engine.Load(SyntheticDir(), cuda);
        var rng = new Random(13);
        int[][] prompts = Enumerable.Range(0, sequences).Select(_ => Enumerable.Range(0, promptTokens).Select(_ => rng.Next(engine.Config.VocabSize)).ToArray()).ToArray();
        var values = new Dictionary<string, double>();
        foreach (var (label, device) in new[] { ("device KV", true), ("host KV", false), ("device KV again", true) })
        {
            var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions
            {
                MaxRunningSequences = sequences, PrefillChunkTokens = 512, MaxBatchTokens = 2048, KvMemoryBytes = 2L << 30, BackendKvStore = device,
            });
            try
            {
                var sw = Stopwatch.StartNew();
                var arrivals = Task.WhenAll(prompts.Select(async (p, i) =>
                {
                    var times = new List<long>();
                    await foreach (var _ in scheduler.GenerateAsync(new GenerationRequest($"{label}-{i}", p, 32, SamplingParams.Greedy), CancellationToken.None))
                    {
                        times.Add(sw.ElapsedTicks);
                    }
                    return times;
                })).GetAwaiter().GetResult();
                long allStarted = arrivals.Max(a => a[0]);
                long end = arrivals.Max(a => a[^1]);
                int after = arrivals.Sum(a => a.Count(t => t > allStarted));
                values[$"{label} decode tok/s"] = after / ((end - allStarted) / (double)Stopwatch.Frequency);
            }
            finally
            {
                scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
        values["device/host"] = values["device KV again decode tok/s"] / values["host KV decode tok/s"];
        report.Bench("Concurrent decode through the scheduler, synthetic maverick-h2048", $"{sequences} sequences, {promptTokens}-token prompts, 32 tokens each", values,
            "decode tok/s over all sequences once every one has its first token");
    }

    internal static string SyntheticDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "gpucheck-maverick-h2048");
        if (!File.Exists(Path.Combine(dir, "config.json")))
        {
            var sw = Stopwatch.StartNew();
            Distributed.Coordinator.Tools.SyntheticCheckpoint.Write(dir, Distributed.Coordinator.Tools.SyntheticCheckpointOptions.Preset("maverick-h2048"), TextWriter.Null);
            Console.WriteLine($"wrote {dir} in {sw.Elapsed.TotalSeconds:F1} s");
        }
        return dir;
    }

    private static InferenceResult Infer(Llama4Engine engine, int[] promptIds, int maxNewTokens) =>
        engine.InferAsync(promptIds, maxNewTokens, CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Runs one fixture for information only (e.g. the Fast precision, which is not expected to meet 2e-3).</summary>
    public static void Measure(CheckReport report, string section, IKernelBackend backend, string fixturesRoot)
    {
        foreach (string fixture in Fixtures)
        {
            var (pass, detail, worst) = RunFixtureCore(backend, Path.Combine(fixturesRoot, fixture));
            report.Bench(section, fixture, new Dictionary<string, double>
            {
                ["worst last_logits max abs"] = worst,
                ["all checks met"] = pass ? 1 : 0,
            }, detail.Length > 300 ? detail[..300] + "…" : detail);
        }
    }

    private static (bool, string) RunFixture(IKernelBackend backend, string dir)
    {
        var (pass, detail, _) = RunFixtureCore(backend, dir);
        return (pass, detail);
    }

    /// <summary>
    /// The FP8 goldens (tiny-maverick-fp8): the release format weight-only against golden.json and W8A8 against
    /// golden_fp8_act.json, and tiny-maverick-mm quantized at load against the same. golden_fp8_act's prompt 3 has an
    /// activation-quantization decision on a tie within float32 noise (tests/Golden.Tests KnownActivationTie): its
    /// logit bound is reported, not asserted, while argmax, routing and greedy tokens stay exact.
    /// </summary>
    public static void RunFp8(CheckReport report, string section, IKernelBackend backend, string fixturesRoot)
    {
        string goldenDir = Path.Combine(fixturesRoot, "tiny-maverick-fp8");
        if (!Directory.Exists(goldenDir))
        {
            return;
        }
        var weightOnly = ExpertLoadOptions.Default;
        var w8a8 = new ExpertLoadOptions(Activations: Fp8ActivationMode.PerTokenFp8);
        foreach (var (model, options, golden) in new[]
        {
            ("tiny-maverick-fp8", weightOnly, "golden.json"),
            ("tiny-maverick-fp8", w8a8, "golden_fp8_act.json"),
            ("tiny-maverick-mm", new ExpertLoadOptions(ExpertQuantization.Fp8), "golden.json"),
            ("tiny-maverick-mm", new ExpertLoadOptions(ExpertQuantization.Fp8, Fp8ActivationMode.PerTokenFp8), "golden_fp8_act.json"),
        })
        {
            report.Check(section, $"{model} ({options.Quantize}, {options.ActivationsTag}) vs {golden}", () =>
            {
                var (pass, detail, _) = RunFixtureCore(backend, Path.Combine(fixturesRoot, model), options, golden, goldenDir,
                    golden == "golden_fp8_act.json" ? i => i == 3 : null);
                return (pass, detail);
            });
        }
    }

    private static (bool Pass, string Detail, double WorstLogit) RunFixtureCore(IKernelBackend backend, string dir, ExpertLoadOptions? experts = null,
        string goldenFile = "golden.json", string? goldenDir = null, Func<int, bool>? logitExempt = null)
    {
        using JsonDocument golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(goldenDir ?? dir, goldenFile)));
        JsonElement root = golden.RootElement;
        double tolerance = root.GetProperty("tolerances").GetProperty("last_logits_max_abs").GetDouble();
        using Llama4Engine engine = Llama4Engine.Load(dir, backend, experts: experts);
        engine.KvDType = KvCacheDType.Fp32;
        {
            var problems = new List<string>();
            var exemptNotes = new List<string>();
            double worstLogit = 0;
            int prompts = 0;
            foreach (JsonElement prompt in root.GetProperty("prompts").EnumerateArray())
            {
                prompts++;
                string name = prompt.GetProperty("name").GetString() ?? "?";
                int[] ids = Ints(prompt.GetProperty("input_ids"));
                int[] expectedNew = Ints(prompt.GetProperty("greedy").GetProperty("new_tokens"));
                InferenceResult r = Infer(engine, ids, expectedNew.Length);
                float[] expectedLogits = prompt.GetProperty("last_logits").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
                if (r.LastLogits.Length != expectedLogits.Length)
                {
                    problems.Add($"{name}: {r.LastLogits.Length} logits, expected {expectedLogits.Length}");
                }
                else
                {
                    double d = ErrorStats.Of(r.LastLogits, expectedLogits).MaxAbs;
                    bool exempt = logitExempt?.Invoke(prompts - 1) == true;
                    if (exempt)
                    {
                        // A documented rounding tie of the fixture (see Golden.Tests KnownActivationTie): reported, not asserted.
                        exemptNotes.Add($"{name}: last_logits max abs {d:0.###e+0}, bound not asserted (known quantization tie)");
                    }
                    else
                    {
                        worstLogit = Math.Max(worstLogit, d);
                    }
                    if ((d > tolerance && !exempt) || r.LastLogits.Any(float.IsNaN))
                    {
                        problems.Add($"{name}: last_logits max abs {d:0.###e+0} > {tolerance}");
                    }
                }
                int[] expectedArgmax = Ints(prompt.GetProperty("argmax"));
                if (!r.Argmax.SequenceEqual(expectedArgmax))
                {
                    int first = FirstDifference(r.Argmax, expectedArgmax);
                    problems.Add($"{name}: argmax differs first at position {first}");
                }
                foreach (JsonProperty layer in prompt.GetProperty("experts").EnumerateObject())
                {
                    int l = int.Parse(layer.Name, System.Globalization.CultureInfo.InvariantCulture);
                    int[] expected = Ints(layer.Value.GetProperty("top1"));
                    if (!r.Experts.TryGetValue(l, out int[][]? actual))
                    {
                        problems.Add($"{name}: no routing reported for MoE layer {l}");
                        continue;
                    }
                    int[] top1 = actual.Select(a => a.Length > 0 ? a[0] : -1).ToArray();
                    if (!top1.SequenceEqual(expected))
                    {
                        problems.Add($"{name}: routing of layer {l} differs first at token {FirstDifference(top1, expected)}");
                    }
                }
                if (!r.NewTokens.SequenceEqual(expectedNew))
                {
                    problems.Add($"{name}: greedy tokens [{string.Join(',', r.NewTokens)}] vs golden [{string.Join(',', expectedNew)}]");
                }
            }
            string summary = $"{prompts} prompts; worst last_logits max abs {worstLogit:0.###e+0} (tolerance {tolerance})"
                + (exemptNotes.Count > 0 ? $" ({string.Join("; ", exemptNotes)})" : "");
            return (problems.Count == 0,
                problems.Count == 0 ? $"{summary}; argmax, routing, greedy exact" : $"{summary}; {string.Join("; ", problems)}", worstLogit);
        }
    }

    /// <summary>
    /// Milliseconds per greedy decode step through the KV cache after the prompt (<see cref="EngineBenchmark"/>, best of 2
    /// after a warm-up run).
    /// </summary>
    public static double DecodeMsPerToken(IKernelBackend backend, string dir, int steps)
    {
        using Llama4Engine engine = Llama4Engine.Load(dir, backend);
        int[] prompt = Ints(JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json"))).RootElement
            .GetProperty("prompts")[3].GetProperty("input_ids"));
        return EngineBenchmark.RunAsync(engine, prompt, steps, 2, CancellationToken.None).GetAwaiter().GetResult().DecodeSecondsPerToken * 1000;
    }

    /// <summary>
    /// End to end on a Maverick-like shape: writes the maverick-h2048 synthetic checkpoint (4 GB bf16) to /tmp once, then
    /// per backend loads the engine and times a 128-token prefill and 32 decode steps (best of 2, after a warm-up).
    /// </summary>
    public static void SyntheticEngineBench(CheckReport report, IKernelBackend cuda, IKernelBackend cpu)
    {
        string dir = SyntheticDir();
        var values = new Dictionary<string, double>();
        foreach (var (label, backend) in new[] { ("CUDA", cuda), ("CPU", cpu) })
        {
            using Llama4Engine engine = Llama4Engine.Load(dir, backend);
            var rng = new Random(5);
            int[] prompt = Enumerable.Range(0, 128).Select(_ => rng.Next(engine.Config.VocabSize)).ToArray();
            var t = EngineBenchmark.RunAsync(engine, prompt, 32, 2, CancellationToken.None).GetAwaiter().GetResult();
            double bestPrefill = t.PrefillSeconds, bestDecode = t.DecodeSecondsPerToken * 32;
            values[$"{label} prefill tok/s"] = 128 / bestPrefill;
            values[$"{label} decode tok/s"] = 32 / bestDecode;
        }
        report.Bench("Engine on synthetic maverick-h2048", "128-token prefill, 32 decode steps", values,
            $"CPU backend {cpu.Name}; KV cache in device memory on CUDA; activations cross PCIe on every op (host-memory kernel interface)");
    }

    private static int FirstDifference(int[] a, int[] b)
    {
        int n = Math.Min(a.Length, b.Length);
        for (int i = 0; i < n; i++)
        {
            if (a[i] != b[i])
            {
                return i;
            }
        }
        return n;
    }

    private static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}
