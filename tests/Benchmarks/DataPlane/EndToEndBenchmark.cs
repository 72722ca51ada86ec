using System.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Grpc;
using Distributed.Tests.Shared;
using Microsoft.Extensions.Logging;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// End-to-end greedy decode of a model with its routed experts in-process vs on N local worker processes (same run,
/// same prompt), with the dispatcher's breakdown: serialize (gather, scale, encode, write), wait (wire + worker),
/// worker (decode + compute + encode as reported by the workers), combine (decode replies, sum slots).
/// </summary>
internal static class EndToEndBenchmark
{
    public static async Task<int> RunAsync(string[] args)
    {
        string Arg(string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault() ?? fallback;
        string model = Arg("--model", FindFixture("tiny-maverick"));
        int workers = int.Parse(Arg("--workers", "2"));
        int tokens = int.Parse(Arg("--tokens", "64"));
        int[] prompt = [500, 17, 300, 42];
        if (args.Contains("--overlap"))
        {
            return await OverlapAsync(model, workers, args.Contains("--wire-fp32") ? WireDType.Fp32 : WireDType.Bf16,
                [.. Arg("--clients", "1,8,32").Split(',').Select(int.Parse)], [.. Arg("--delays", "0,50,200").Split(',').Select(int.Parse)],
                int.Parse(Arg("--steps", "40")), int.Parse(Arg("--rounds", "7")), int.Parse(Arg("--micro-batch", "8")));
        }

        using var local = Llama4Engine.Load(model, new CpuKernelBackend(1));
        int moeLayers = local.Config.MoeLayers.Count;
        double localTps = await DecodeAsync(local, prompt, tokens);
        Console.WriteLine($"model {model}, {moeLayers} MoE layers, {tokens} greedy tokens after a {prompt.Length}-token prompt, coordinator backend 1 thread");
        Console.WriteLine($"| experts | wire | tok/s | vs in-process | overhead per MoE layer | serialize | wait (wire+worker) | worker | combine | requests × mean round trip, per worker |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        Console.WriteLine($"| in-process | - | {localTps:F1} | 1.00× | - | - | - | - | - | - |");

        var options = new LocalClusterOptions { Workers = workers, ModelDirectory = model };
        await using var cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions { WireDType = WireDType.Bf16 }, _ => { },
            LoggerFactory.Create(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning)), CancellationToken.None);
        // shm = rows in the shared ring with the descriptor on the stream; shm bell = the ring doorbell (issue #15).
        foreach (var (wire, shared, bell) in new[]
        {
            (WireDType.Bf16, false, false), (WireDType.Fp32, false, false), (WireDType.Bf16, true, false), (WireDType.Bf16, true, true),
            (WireDType.Fp32, true, false), (WireDType.Fp32, true, true), (WireDType.Fp8E4M3, false, false),
        })
        {
            var dispatcher = cluster.CreateDispatcher(new DistributionOptions { WireDType = wire, PreferSharedMemory = shared, RingDoorbell = bell });
            using var engine = Llama4Engine.Load(model, new CpuKernelBackend(1), dispatcher);
            await DecodeAsync(engine, prompt, 4);
            dispatcher.Statistics.Reset();
            double tps = await DecodeAsync(engine, prompt, tokens);
            var s = dispatcher.Statistics;
            double perLayerUs = (1e6 / tps - 1e6 / localTps) / moeLayers;
            double n = s.Dispatches;
            // Where the requests went (the routing of the generated tokens decides it; a layer whose rows stay on one
            // worker finds it awake, one that alternates wakes the other) and each worker's mean round trip.
            string perWorker = string.Join(", ", dispatcher.Load.Workers.Select(w => $"{w.Requests} × {1000 * w.MeanLatencyMs:F0} µs"));
            if (dispatcher.ConnectionSource is WorkerChannelPool pool)
            {
                perWorker += "; " + string.Join(", ", pool.Connections.Select(c => $"{c.Transport}{(c.UsesDoorbell ? $" bell {c.DoorbellRequests}" : "")}"));
            }
            Console.WriteLine($"| {workers} workers | {wire}{(shared ? " shm" : "")}{(bell ? " bell" : "")} | {tps:F1} | {tps / localTps:F2}× | {perLayerUs:F0} µs | {1000 * s.SerializeMs / n:F0} µs | {1000 * s.WaitMs / n:F0} µs | {1000 * s.WorkerMs / n:F0} µs | {1000 * s.CombineMs / n:F0} µs | {perWorker} |");
        }
        return 0;
    }

    /// <summary>
    /// Issue #15: N sequences decoded together ("clients": N rows per step, as the scheduler batches N streams), with the
    /// routed experts on <paramref name="workers"/> static-shard workers reached through a <see cref="DelayRelay"/> of each
    /// one-way delay, with and without micro-batch ping-pong, against the same steps in-process. The machine is shared
    /// and noisy, so every configuration runs once per round (order reversed every other round), each run the median of
    /// <paramref name="steps"/> decode steps, and each figure is the median over <paramref name="rounds"/> rounds of the
    /// per-round value: tokens/s (clients / median step) and its ratio to in-process in the same round; the share of the
    /// added delay hidden, 1 − (step(d) − step(0)) / (MoE layers × 2d), with step(0) the same configuration without added
    /// delay in the same round (MoE layers × 2d is what an unsplit step that overlapped nothing would pay: one round trip
    /// per MoE layer); and the dispatcher's own hidden share (in-flight time during which the coordinator was not
    /// blocked in combine), over all rounds.
    /// </summary>
    private static async Task<int> OverlapAsync(string model, int workers, WireDType wire, int[] clientCounts, int[] delays, int steps, int rounds, int minTokens)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var splitOn = MicroBatching.From(minTokens);
        using var local = Llama4Engine.Load(model, new CpuKernelBackend(1));
        int moeLayers = local.Config.MoeLayers.Count;
        await using var set = await DelayedWorkers.StartAsync(model, workers, delays, _ => { });
        var engines = new List<(int Delay, GrpcExpertDispatcher Dispatcher, WorkerChannelPool Pool, Llama4Engine Engine)>();
        try
        {
            foreach (int d in delays)
            {
                var (dispatcher, pool) = await set.ConnectAsync(d, new DistributionOptions { WireDType = wire });
                engines.Add((d, dispatcher, pool, Llama4Engine.Load(model, new CpuKernelBackend(1), dispatcher)));
            }
            Console.WriteLine($"model {model}: {moeLayers} MoE layers, {workers} static-shard workers (1 thread each), {wire} wire, inline rows, through a DelayRelay per worker; "
                + $"N sequences decoded together (prompts of <= 4 tokens), {steps} greedy decode steps per run, median step per run, median of {rounds} rounds; "
                + $"ping-pong = --micro-batch {minTokens}; coordinator backend 1 thread; {Environment.ProcessorCount} CPUs shared by all processes");
            Console.WriteLine("| one-way delay | ping-pong | clients | tok/s | vs in-process | median step ms | added delay hidden | dispatcher hidden share | wait µs per dispatch | relay hold p50 µs |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
            foreach (int c in clientCounts)
            {
                var prompts = BatchedSteps.Prompts(local.Config.VocabSize, c, seed: c).Select(p => p.Take(4).ToArray()).ToArray();
                // Configuration k: 0 = in-process; then (delay, off/on) pairs.
                var configs = new List<(int Delay, bool PingPong)> { (-1, false) };
                configs.AddRange(delays.SelectMany(d => new[] { (d, false), (d, true) }));
                var step = configs.Select(_ => new List<double>()).ToArray();
                var waitMs = new double[configs.Count];
                var inFlightMs = new double[configs.Count];
                var dispatches = new double[configs.Count];
                var holds = configs.Select(_ => new List<double>()).ToArray();
                foreach (var e in engines)
                {
                    await MedianStepAsync(e.Engine, prompts, 2, splitOn);
                }
                for (int r = 0; r < rounds; r++)
                {
                    var order = Enumerable.Range(0, configs.Count);
                    foreach (int k in r % 2 == 0 ? order : order.Reverse())
                    {
                        var (d, pingPong) = configs[k];
                        if (d < 0)
                        {
                            step[k].Add(await MedianStepAsync(local, prompts, steps, MicroBatching.Off));
                            continue;
                        }
                        var e = engines.First(x => x.Delay == d);
                        var s0 = (e.Dispatcher.Statistics.WaitMs, e.Dispatcher.Statistics.InFlightMs, e.Dispatcher.Statistics.Dispatches);
                        set.TakeHolds(d);
                        step[k].Add(await MedianStepAsync(e.Engine, prompts, steps, pingPong ? splitOn : MicroBatching.Off));
                        holds[k].Add(set.TakeHolds(d).P50Microseconds);
                        waitMs[k] += e.Dispatcher.Statistics.WaitMs - s0.WaitMs;
                        inFlightMs[k] += e.Dispatcher.Statistics.InFlightMs - s0.InFlightMs;
                        dispatches[k] += e.Dispatcher.Statistics.Dispatches - s0.Dispatches;
                    }
                }
                for (int k = 0; k < configs.Count; k++)
                {
                    var (d, pingPong) = configs[k];
                    double stepMedian = Median(step[k]);
                    double ratio = Median([.. step[k].Select((x, r) => step[0][r] / x)]);
                    if (d < 0)
                    {
                        Console.WriteLine(string.Format(inv, "| in-process | - | {0} | {1:F0} | 1.00× | {2:F3} | - | - | - | - |", c, c / stepMedian, 1e3 * stepMedian));
                        continue;
                    }
                    string hidden = "-";
                    if (d != delays[0])
                    {
                        int k0 = configs.IndexOf((delays[0], pingPong));
                        double nominal = moeLayers * 2 * (d - delays[0]) * 1e-6;
                        hidden = Median([.. step[k].Select((x, r) => 1 - (x - step[k0][r]) / nominal)]).ToString("P0", inv);
                    }
                    double hiddenShare = inFlightMs[k] <= 0 ? 0 : Math.Clamp(1 - waitMs[k] / inFlightMs[k], 0, 1);
                    Console.WriteLine(string.Format(inv, "| {0} µs | {1} | {2} | {3:F0} | {4:F2}× | {5:F3} | {6} | {7:P0} | {8:F0} | {9:F0} |",
                        d, pingPong ? "on" : "off", c, c / stepMedian, ratio, 1e3 * stepMedian, hidden, hiddenShare,
                        dispatches[k] == 0 ? 0 : 1000 * waitMs[k] / dispatches[k], Median(holds[k])));
                }
            }
        }
        finally
        {
            foreach (var e in engines)
            {
                e.Engine.Dispose();
                await e.Pool.DisposeAsync();
            }
        }
        return 0;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length == 0 ? double.NaN : sorted[sorted.Length / 2];
    }

    private static async Task<double> MedianStepAsync(Llama4Engine engine, int[][] prompts, int steps, MicroBatching microBatching)
    {
        var seconds = new List<double>();
        await BatchedSteps.RunAsync(engine, prompts, steps, microBatching, seconds);
        var decode = seconds.Skip(1).Order().ToArray();
        return decode[decode.Length / 2];
    }

    private static async Task<double> DecodeAsync(Llama4Engine engine, int[] prompt, int tokens)
    {
        await engine.InferAsync(prompt, 2, CancellationToken.None);
        var sw = Stopwatch.StartNew();
        var r = await engine.InferAsync(prompt, tokens, CancellationToken.None);
        return (r.NewTokens.Length + prompt.Length) / sw.Elapsed.TotalSeconds;
    }

    private static string FindFixture(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "fixtures", name);
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException($"fixture {name} not found; pass --model DIR");
    }
}
