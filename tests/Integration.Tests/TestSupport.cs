using System.Text.Json;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Distributed.Integration.Tests;

/// <summary>The parts of a fixture's golden.json these tests judge by.</summary>
internal sealed record GoldenPrompt(int[] InputIds, float[] LastLogits, int[] Argmax, int[]? ArgmaxPositions,
    Dictionary<int, int[]> ExpertsTop1, int[]? ExpertsPositions, int[] NewTokens);

internal sealed record Golden(double LogitTolerance, IReadOnlyList<GoldenPrompt> Prompts)
{
    public static Golden Load(string fixture, string file = "golden.json")
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TestPaths.Fixture(fixture), file)));
        var root = doc.RootElement;
        static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
        var prompts = root.GetProperty("prompts").EnumerateArray().Select(p => new GoldenPrompt(
            Ints(p.GetProperty("input_ids")),
            [.. p.GetProperty("last_logits").EnumerateArray().Select(x => (float)x.GetDouble())],
            Ints(p.GetProperty("argmax")),
            p.TryGetProperty("argmax_positions", out var ap) ? Ints(ap) : null,
            p.GetProperty("experts").EnumerateObject().ToDictionary(e => int.Parse(e.Name), e => Ints(e.Value.GetProperty("top1"))),
            p.TryGetProperty("experts_positions", out var ep) ? Ints(ep) : null,
            Ints(p.GetProperty("greedy").GetProperty("new_tokens")))).ToList();
        return new Golden(root.GetProperty("tolerances").GetProperty("last_logits_max_abs").GetDouble(), prompts);
    }

    /// <summary>Failures of <paramref name="r"/> against prompt <paramref name="p"/> (empty = pass); also the max logit error.</summary>
    public (List<string> Failures, double MaxLogitError) Check(GoldenPrompt p, InferenceResult r, bool checkLogits)
    {
        var failures = new List<string>();
        double max = 0;
        for (int j = 0; j < p.LastLogits.Length; j++)
        {
            max = Math.Max(max, Math.Abs(r.LastLogits[j] - p.LastLogits[j]));
        }
        if (checkLogits && max > LogitTolerance)
        {
            failures.Add($"last logits differ by {max:G3} > {LogitTolerance}");
        }
        var positions = p.ArgmaxPositions ?? [.. Enumerable.Range(0, p.Argmax.Length)];
        for (int i = 0; i < positions.Length; i++)
        {
            if (r.Argmax[positions[i]] != p.Argmax[i])
            {
                failures.Add($"argmax at position {positions[i]}: {r.Argmax[positions[i]]} != {p.Argmax[i]}");
                break;
            }
        }
        foreach (var (layer, top1) in p.ExpertsTop1)
        {
            var epos = p.ExpertsPositions ?? [.. Enumerable.Range(0, top1.Length)];
            for (int i = 0; i < epos.Length; i++)
            {
                if (r.Experts[layer][epos[i]][0] != top1[i])
                {
                    failures.Add($"layer {layer} routing at position {epos[i]}: expert {r.Experts[layer][epos[i]][0]} != {top1[i]}");
                    break;
                }
            }
        }
        if (!r.NewTokens.SequenceEqual(p.NewTokens))
        {
            failures.Add($"greedy tokens [{string.Join(",", r.NewTokens)}] != [{string.Join(",", p.NewTokens)}]");
        }
        return (failures, max);
    }
}

/// <summary>Routes logs to the current test's output (and drops them between tests).</summary>
internal sealed class TestLog
{
    private volatile ITestOutputHelper? _output;

    public ITestOutputHelper? Output
    {
        get => _output;
        set => _output = value;
    }

    public void Write(string line)
    {
        try
        {
            _output?.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
            // The test that owned the output has finished.
        }
    }

    public ILoggerFactory CreateLoggerFactory() => LoggerFactory.Create(b => b.AddProvider(new Provider(this)).SetMinimumLevel(LogLevel.Information)
        .AddFilter("Orleans", LogLevel.Warning).AddFilter("Microsoft", LogLevel.Warning).AddFilter("Polly", LogLevel.Warning)
        .AddFilter("Grpc", LogLevel.Warning));

    private sealed class Provider(TestLog log) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Logger(log, categoryName);

        public void Dispose()
        {
        }
    }

    private sealed class Logger(TestLog log, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            => log.Write($"[coordinator {logLevel} {category.Split('.').Last()}] {formatter(state, exception)}{(exception is null ? "" : " " + exception.Message)}");
    }
}

/// <summary>In-process reference results per fixture (computed once per test run).</summary>
internal static class Reference
{
    private static readonly Dictionary<string, Task<InferenceResult[]>> Results = new();

    public static Task<InferenceResult[]> ForAsync(string fixture)
    {
        lock (Results)
        {
            if (!Results.TryGetValue(fixture, out var task))
            {
                Results[fixture] = task = Task.Run(async () =>
                {
                    using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), new CpuKernelBackend(1));
                    var golden = Golden.Load(fixture);
                    var results = new InferenceResult[golden.Prompts.Count];
                    for (int i = 0; i < results.Length; i++)
                    {
                        results[i] = await engine.InferAsync(golden.Prompts[i].InputIds, golden.Prompts[i].NewTokens.Length, CancellationToken.None);
                    }
                    return results;
                });
            }
            return task;
        }
    }

    public static bool BitwiseEqual(float[] a, float[] b)
        => a.Length == b.Length && a.AsSpan().SequenceEqual(b) && a.Select(BitConverter.SingleToInt32Bits).SequenceEqual(b.Select(BitConverter.SingleToInt32Bits));
}
