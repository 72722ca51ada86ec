using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Text.Json;
using Distributed.Kernels;

namespace Distributed.GpuCheck;

/// <summary>
/// The golden fixtures end to end on a backend through the coordinator's engine
/// (<c>Distributed.Coordinator.Model.Llama4.Llama4Engine</c>: <c>Load(dir, backend)</c>, <c>InferAsync(ids, n, ct)</c>
/// returning <c>InferenceResult(PromptIds, LastLogits, Argmax, Experts, NewTokens)</c>). The engine is bound by
/// reflection so this check builds before the engine lands; a missing engine fails the check with that reason.
/// Pass criteria (each fixture's golden.json): last_logits max |diff| ≤ tolerances.last_logits_max_abs, argmax at every
/// prompt position exact, routing (experts top-1 per MoE layer) exact, the greedy new tokens exact.
/// </summary>
internal static class GoldenRuns
{
    public const string EngineTypeName = "Distributed.Coordinator.Model.Llama4.Llama4Engine, Distributed.Coordinator";

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

    /// <summary>The engine's entry points, or a reason why they are not there.</summary>
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "Distributed.Coordinator is rooted in the GPU check's publish.")]
    [UnconditionalSuppressMessage("Trimming", "IL2057", Justification = "Distributed.Coordinator is rooted in the GPU check's publish.")]
    [UnconditionalSuppressMessage("Trimming", "IL2075", Justification = "Distributed.Coordinator is rooted in the GPU check's publish.")]
    public static EngineBinding? BindEngine(out string reason)
    {
        Type? type = Type.GetType(EngineTypeName, throwOnError: false);
        if (type is null)
        {
            reason = $"engine type {EngineTypeName} not found in this build (merge main, which holds the Llama4 engine)";
            return null;
        }
        MethodInfo? load = type.GetMethod("Load", BindingFlags.Public | BindingFlags.Static, [typeof(string), typeof(IKernelBackend)]);
        MethodInfo? infer = type.GetMethod("InferAsync", BindingFlags.Public | BindingFlags.Instance,
            [typeof(IReadOnlyList<int>), typeof(int), typeof(CancellationToken)]);
        if (load is null || infer is null)
        {
            reason = $"{type.FullName} lacks Load(string, IKernelBackend) or InferAsync(IReadOnlyList<int>, int, CancellationToken)";
            return null;
        }
        reason = "";
        return new EngineBinding(load, infer);
    }

    public static void Run(CheckReport report, string section, IKernelBackend backend, string fixturesRoot, EngineBinding engine)
    {
        foreach (string fixture in Fixtures)
        {
            string dir = Path.Combine(fixturesRoot, fixture);
            report.Check(section, fixture, () => RunFixture(backend, dir, engine));
        }
    }

    private static (bool, string) RunFixture(IKernelBackend backend, string dir, EngineBinding binding)
    {
        using JsonDocument golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json")));
        JsonElement root = golden.RootElement;
        double tolerance = root.GetProperty("tolerances").GetProperty("last_logits_max_abs").GetDouble();
        object engine = binding.Load(dir, backend);
        try
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
                EngineResult r = binding.Infer(engine, ids, expectedNew.Length);
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
            return (problems.Count == 0, problems.Count == 0 ? $"{summary}; argmax, routing, greedy exact" : $"{summary}; {string.Join("; ", problems)}");
        }
        finally
        {
            (engine as IDisposable)?.Dispose();
        }
    }

    /// <summary>Milliseconds per greedy decode step: (time of prompt + 1 + n tokens − time of prompt + 1 token) / n.</summary>
    public static double DecodeMsPerToken(IKernelBackend backend, string dir, EngineBinding binding, int steps)
    {
        object engine = binding.Load(dir, backend);
        try
        {
            int[] prompt = Ints(JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json"))).RootElement
                .GetProperty("prompts")[3].GetProperty("input_ids"));
            binding.Infer(engine, prompt, 2);
            var sw = Stopwatch.StartNew();
            binding.Infer(engine, prompt, 1);
            double one = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            binding.Infer(engine, prompt, 1 + steps);
            double many = sw.Elapsed.TotalMilliseconds;
            return (many - one) / steps;
        }
        finally
        {
            (engine as IDisposable)?.Dispose();
        }
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

/// <summary>What the check reads from an <c>InferenceResult</c>.</summary>
internal sealed record EngineResult(float[] LastLogits, int[] Argmax, IReadOnlyDictionary<int, int[][]> Experts, int[] NewTokens);

/// <summary>Reflection binding of the engine's two entry points.</summary>
internal sealed class EngineBinding(MethodInfo load, MethodInfo infer)
{
    public object Load(string dir, IKernelBackend backend)
    {
        try
        {
            return load.Invoke(null, [dir, backend]) ?? throw new InvalidOperationException("Llama4Engine.Load returned null");
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }

    [UnconditionalSuppressMessage("Trimming", "IL2075", Justification = "Distributed.Coordinator is rooted in the GPU check's publish.")]
    public EngineResult Infer(object engine, int[] promptIds, int maxNewTokens)
    {
        Task task;
        try
        {
            task = (Task)(infer.Invoke(engine, [promptIds, maxNewTokens, CancellationToken.None])
                ?? throw new InvalidOperationException("InferAsync returned null"));
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
        task.GetAwaiter().GetResult();
        object result = task.GetType().GetProperty("Result")!.GetValue(task)
            ?? throw new InvalidOperationException("InferAsync completed with null");
        Type t = result.GetType();
        T Get<T>(string name) => (T)(t.GetProperty(name)?.GetValue(result)
            ?? throw new InvalidOperationException($"InferenceResult.{name} is missing or null"));
        return new EngineResult(Get<float[]>("LastLogits"), Get<int[]>("Argmax"),
            Get<IReadOnlyDictionary<int, int[][]>>("Experts"), Get<int[]>("NewTokens"));
    }
}
