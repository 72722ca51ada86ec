using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.Logging;

namespace Distributed.Benchmarks.Admin;

/// <summary>
/// <c>admin-events</c>: N local worker processes, an in-process coordinator (engine + continuous-batching scheduler)
/// under a closed-loop load of C streaming clients, and a timeline of cluster events: SIGKILL a worker, restart it
/// (scale-up: it joins and gets experts), drain a worker, rebalance. For each event it prints the time to detect the
/// failure, to recover (re-placed plan, first token after the kill), for the change to take effect, and the
/// throughput (generated tokens per second) in the second after the event against the steady state before it,
/// measured in the same run. Failed requests are counted (expected: 0).
/// </summary>
internal static class AdminEventsBenchmark
{
    public static async Task<int> RunAsync(string[] args)
    {
        string model = Arg(args, "--model") ?? Path.Combine(FindRoot(), "tests", "fixtures", "tiny-maverick");
        int workers = int.Parse(Arg(args, "--workers") ?? "3", CultureInfo.InvariantCulture);
        int clients = int.Parse(Arg(args, "--clients") ?? "8", CultureInfo.InvariantCulture);
        int maxTokens = int.Parse(Arg(args, "--max-tokens") ?? "24", CultureInfo.InvariantCulture);
        double settle = double.Parse(Arg(args, "--settle-seconds") ?? "3", CultureInfo.InvariantCulture);
        double warmup = double.Parse(Arg(args, "--warmup-seconds") ?? "15", CultureInfo.InvariantCulture);
        var wire = DistributionOptions.ParseWire(Arg(args, "--wire") ?? "bf16");

        using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Error));
        var options = new LocalClusterOptions { Workers = workers, ModelDirectory = model };
        options.WorkerSettings["Placement:SettleDelay"] = "00:00:00.2";
        options.WorkerSettings["ExpertWorker:RetireDelay"] = "00:00:01";
        options.WorkerSettings["Cluster:ProbeTimeout"] = "00:00:01";
        options.WorkerSettings["Cluster:NumMissedProbesLimit"] = "2";
        options.WorkerSettings["Placement:ProbeTimeout"] = "00:00:01";
        await using var cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions { WireDType = wire }, _ => { }, loggerFactory, CancellationToken.None);
        using var engine = Llama4Engine.Load(model, new CpuKernelBackend(1), cluster.Dispatcher);
        await using var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions { MaxRunningSequences = Math.Max(16, clients), MaxBatchTokens = 256, PrefillChunkTokens = 64 });
        var dispatcher = cluster.GrpcDispatcher;
        var placement = cluster.Placement;

        var tokens = new ConcurrentQueue<long>();
        long failures = 0, completed = 0;
        using var stop = new CancellationTokenSource();
        var load = Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            var local = new Random(c);
            while (!stop.IsCancellationRequested)
            {
                var prompt = Enumerable.Range(0, 4 + local.Next(12)).Select(_ => local.Next(1, engine.Config.VocabSize)).ToArray();
                try
                {
                    await foreach (var _ in scheduler.GenerateAsync(new GenerationRequest($"c{c}", prompt, maxTokens, SamplingParams.Greedy), CancellationToken.None))
                    {
                        tokens.Enqueue(Stopwatch.GetTimestamp());
                    }
                    Interlocked.Increment(ref completed);
                }
                catch (Exception ex) when (ex is not OutOfMemoryException)
                {
                    Interlocked.Increment(ref failures);
                    Console.Error.WriteLine($"request failed: {ex.GetType().Name}: {ex.Message}");
                }
            }
        })).ToArray();

        double Rate(long from, long to) => tokens.Count(t => t >= from && t < to) / ((to - from) / (double)Stopwatch.Frequency);
        long Now() => Stopwatch.GetTimestamp();
        long Sec(double s) => (long)(s * Stopwatch.Frequency);
        double Ms(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;
        var rows = new List<string>();
        async Task<double> SteadyAsync()
        {
            long a = Now();
            await Task.Delay(TimeSpan.FromSeconds(settle));
            return Rate(a, Now());
        }
        async Task<(double Dip, double Min)> AfterAsync(long t0)
        {
            await Task.Delay(TimeSpan.FromSeconds(Math.Max(1.2, settle / 2)));
            double min = double.MaxValue;
            for (long b = t0; b + Sec(0.25) <= t0 + Sec(1); b += Sec(0.25))
            {
                min = Math.Min(min, Rate(b, b + Sec(0.25)));
            }
            return (Rate(t0, t0 + Sec(1)), min);
        }
        async Task WaitAsync(Func<bool> condition, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (!condition() && DateTime.UtcNow < deadline)
            {
                await Task.Delay(10);
            }
        }

        // JIT tiering and first-touch page faults make the first seconds much slower than the steady state.
        await Task.Delay(TimeSpan.FromSeconds(warmup));
        Console.Error.WriteLine($"admin-events: {workers} workers, {clients} clients, max_tokens {maxTokens}, wire {wire}, model {model}");

        // 1. SIGKILL the last worker (not the localhost-clustering primary).
        double before = await SteadyAsync();
        int victim = workers - 1;
        long versionBefore = (long)placement.GetServingTable().Version;
        long kill = Now();
        cluster.KillWorker(victim);
        await WaitAsync(() => dispatcher.LastRecoveryTimestamp > kill || (placement.Snapshot?.Plan.Version ?? 0) > versionBefore + 0, TimeSpan.FromSeconds(60));
        await WaitAsync(() => placement.Snapshot is { IsServing: true } s && s.Plan.IndexOf($"worker-{victim}") < 0, TimeSpan.FromSeconds(60));
        long replaced = Now();
        var (dip, min) = await AfterAsync(kill);
        long detect = dispatcher.LastLossTimestamp > kill ? dispatcher.LastLossTimestamp - kill : -1;
        long lossAt = dispatcher.LastLossTimestamp > kill ? dispatcher.LastLossTimestamp : kill;
        long firstToken = tokens.Where(t => t > lossAt).DefaultIfEmpty(lossAt).Min() - kill;
        long recovered = dispatcher.LastRecoveryTimestamp > kill ? dispatcher.LastRecoveryTimestamp - kill : replaced - kill;
        rows.Add($"| SIGKILL worker-{victim} | detect {Ms(detect):F0} ms; re-placed {Ms(recovered):F0} ms; first token after the loss {Ms(firstToken):F0} ms | {before:F0} | {dip:F0} ({dip / before:P0}) | {min:F0} |");

        // 2. Restart it: a scale-up (the worker joins and experts are spread onto it, staged then committed).
        before = await SteadyAsync();
        long start = Now();
        await cluster.StartWorkerAsync(victim, CancellationToken.None);
        long ready = Now();
        await WaitAsync(() => placement.Snapshot is { IsServing: true } s && s.Plan.IndexOf($"worker-{victim}") is >= 0 and var i && s.Plan.ShardOf(i).Count > 0, TimeSpan.FromSeconds(60));
        long effective = Now();
        (dip, min) = await AfterAsync(ready);
        rows.Add($"| scale-up: start worker-{victim} | process ready {Ms(ready - start):F0} ms; plan with its experts active {Ms(effective - ready):F0} ms after ready ({Ms(effective - start):F0} ms from start) | {before:F0} | {dip:F0} ({dip / before:P0}) | {min:F0} |");

        // 3. Drain worker-1.
        before = await SteadyAsync();
        long drain = Now();
        var result = await placement.PlacementGrain.DrainWorkerAsync("worker-1");
        if (result.Error is not null)
        {
            throw new InvalidOperationException(result.Error.Message);
        }
        await WaitAsync(() => placement.Snapshot is { IsServing: true } s && s.Plan.Version >= result.Operation!.TargetVersion, TimeSpan.FromSeconds(60));
        long drained = Now();
        (dip, min) = await AfterAsync(drain);
        rows.Add($"| drain worker-1 ({result.ExpertsMoved} expert copies moved) | committed {Ms(drained - drain):F0} ms after the call | {before:F0} | {dip:F0} ({dip / before:P0}) | {min:F0} |");

        // 4. Rebalance from the measured load, one extra replica per layer.
        before = await SteadyAsync();
        var stats = dispatcher.Load;
        long reb = Now();
        var rebalance = await placement.PlacementGrain.RebalanceAsync(new RebalanceRequest(
            [.. stats.Model.MoeLayers.Select(l => new LayerLoad(l, stats.Layer(l).Recent))], 1, false));
        if (rebalance.Error is not null)
        {
            throw new InvalidOperationException(rebalance.Error.Message);
        }
        await WaitAsync(() => placement.Snapshot is { IsServing: true } s && s.Plan.Version >= rebalance.Operation!.TargetVersion, TimeSpan.FromSeconds(60));
        long rebalanced = Now();
        (dip, min) = await AfterAsync(reb);
        rows.Add($"| rebalance (+1 replica/layer, {rebalance.ExpertsMoved} copies loaded; predicted max/mean {rebalance.Before!.MaxOverMean:F2} -> {rebalance.After!.MaxOverMean:F2}) | committed {Ms(rebalanced - reb):F0} ms after the call | {before:F0} | {dip:F0} ({dip / before:P0}) | {min:F0} |");

        stop.Cancel();
        await Task.WhenAll(load);
        Console.WriteLine($"| event | timing | tok/s before (steady {settle:F0} s) | tok/s in the 1 s after | worst 250 ms window (tok/s) |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var r in rows)
        {
            Console.WriteLine(r);
        }
        Console.WriteLine($"requests completed {completed}, failed {failures}; slices re-sent {dispatcher.ResentSlices}, recoveries {dispatcher.Recoveries}");
        return failures == 0 ? 0 : 1;
    }

    private static string? Arg(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
            {
                return dir.FullName;
            }
        }
        return Directory.GetCurrentDirectory();
    }
}
