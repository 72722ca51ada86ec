using System.Diagnostics;
using System.Text.Json;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Kernels;

namespace Distributed.GpuCheck;

/// <summary>
/// The golden fixtures end to end on a backend through the coordinator's <see cref="Llama4Engine"/> (experts in-process).
/// Pass criteria (each fixture's golden.json): last_logits max |diff| ≤ tolerances.last_logits_max_abs, argmax at every
/// prompt position exact, routing (experts top-1 per MoE layer) exact, the greedy new tokens exact.
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

    private static (bool Pass, string Detail, double WorstLogit) RunFixtureCore(IKernelBackend backend, string dir)
    {
        using JsonDocument golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json")));
        JsonElement root = golden.RootElement;
        double tolerance = root.GetProperty("tolerances").GetProperty("last_logits_max_abs").GetDouble();
        using Llama4Engine engine = Llama4Engine.Load(dir, backend);
        {
            var problems = new List<string>();
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
                    worstLogit = Math.Max(worstLogit, d);
                    if (d > tolerance || r.LastLogits.Any(float.IsNaN))
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
            string summary = $"{prompts} prompts; worst last_logits max abs {worstLogit:0.###e+0} (tolerance {tolerance})";
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
        string dir = Path.Combine(Path.GetTempPath(), "gpucheck-maverick-h2048");
        if (!File.Exists(Path.Combine(dir, "config.json")))
        {
            var sw = Stopwatch.StartNew();
            Distributed.Coordinator.Tools.SyntheticCheckpoint.Write(dir, Distributed.Coordinator.Tools.SyntheticCheckpointOptions.Preset("maverick-h2048"), TextWriter.Null);
            Console.WriteLine($"wrote {dir} in {sw.Elapsed.TotalSeconds:F1} s");
        }
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
            $"CPU backend {cpu.Name}; activations cross PCIe on every op (host-memory kernel interface)");
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
