using System.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging;

namespace Distributed.Integration.Tests.Chaos;

/// <summary>
/// Real worker processes (Orleans localhost cluster, fast failure detection, short settle and retire delays), an
/// fp32-wire engine over them, and a continuous-batching scheduler: what the chaos tests drive.
/// </summary>
internal sealed class ChaosCluster : IAsyncDisposable
{
    private readonly ILoggerFactory _loggerFactory;

    private ChaosCluster(LocalWorkerCluster cluster, Llama4Engine engine, ContinuousBatchScheduler scheduler, ILoggerFactory loggerFactory)
    {
        Cluster = cluster;
        Engine = engine;
        Scheduler = scheduler;
        _loggerFactory = loggerFactory;
    }

    public LocalWorkerCluster Cluster { get; }

    public Llama4Engine Engine { get; }

    public ContinuousBatchScheduler Scheduler { get; }

    public GrpcExpertDispatcher Dispatcher => Cluster.GrpcDispatcher;

    public static async Task<ChaosCluster> StartAsync(TestLog log, int workers, string fixture = "tiny-maverick",
        IReadOnlyDictionary<string, string>? settings = null, DistributionOptions? distribution = null)
    {
        var loggerFactory = log.CreateLoggerFactory();
        var options = new LocalClusterOptions { Workers = workers, ModelDirectory = TestPaths.Fixture(fixture), StartTimeout = TimeSpan.FromSeconds(120) };
        options.WorkerSettings["Placement:SettleDelay"] = "00:00:00.2";
        options.WorkerSettings["ExpertWorker:RetireDelay"] = "00:00:01";
        options.WorkerSettings["Cluster:ProbeTimeout"] = "00:00:01";
        options.WorkerSettings["Cluster:NumMissedProbesLimit"] = "2";
        options.WorkerSettings["Placement:ProbeTimeout"] = "00:00:01";
        foreach (var (k, v) in settings ?? new Dictionary<string, string>())
        {
            options.WorkerSettings[k] = v;
        }
        distribution ??= new DistributionOptions { WireDType = WireDType.Fp32, DispatchTimeout = TimeSpan.FromSeconds(20), RecoveryTimeout = TimeSpan.FromSeconds(60) };
        LocalWorkerCluster? cluster = null;
        try
        {
            cluster = await LocalWorkerCluster.StartAsync(options, distribution, log.Write, loggerFactory, CancellationToken.None);
            var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), new CpuKernelBackend(1), cluster.Dispatcher);
            var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions { MaxRunningSequences = 16, MaxBatchTokens = 256, PrefillChunkTokens = 64 },
                loggerFactory.CreateLogger<ContinuousBatchScheduler>());
            return new ChaosCluster(cluster, engine, scheduler, loggerFactory);
        }
        catch
        {
            if (cluster is not null)
            {
                await cluster.DisposeAsync();
            }
            loggerFactory.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs every request concurrently through the scheduler; <paramref name="onToken"/> sees the running count of
    /// generated tokens (over all requests). Returns each request's tokens, or its exception.
    /// </summary>
    public Task<RequestOutcome[]> RunAsync(IReadOnlyList<int[]> prompts, int maxTokens, Action<int>? onToken = null)
        => RunAsync(Scheduler, prompts, maxTokens, onToken);

    /// <summary>As <see cref="RunAsync(IReadOnlyList{int[]}, int, Action{int}?)"/>, through any scheduler.</summary>
    public static async Task<RequestOutcome[]> RunAsync(IGenerationScheduler scheduler, IReadOnlyList<int[]> prompts, int maxTokens, Action<int>? onToken = null)
    {
        int generated = 0;
        var tasks = prompts.Select(async (p, i) =>
        {
            var sw = Stopwatch.StartNew();
            var tokens = new List<int>();
            try
            {
                await foreach (var t in scheduler.GenerateAsync(new GenerationRequest($"r{i}", p, maxTokens, SamplingParams.Greedy), CancellationToken.None))
                {
                    tokens.Add(t.TokenId);
                    onToken?.Invoke(Interlocked.Increment(ref generated));
                }
                return new RequestOutcome([.. tokens], null, sw.Elapsed);
            }
            catch (Exception ex)
            {
                return new RequestOutcome([.. tokens], ex, sw.Elapsed);
            }
        }).ToArray();
        return await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromMinutes(3));
    }

    /// <summary>
    /// Runs rounds of <paramref name="prompts"/> back to back until <paramref name="stop"/> fires (at least one round),
    /// checking every round against <paramref name="reference"/>. Returns the rounds run and the total tokens.
    /// </summary>
    public async Task<(int Rounds, long Tokens, TimeSpan Elapsed)> LoadUntilAsync(IReadOnlyList<int[]> prompts, int[][] reference, int maxTokens, Task stop, string what)
    {
        var sw = Stopwatch.StartNew();
        int rounds = 0;
        long tokens = 0;
        do
        {
            var outcomes = await RunAsync(prompts, maxTokens);
            AssertIdentical(reference, outcomes, $"{what}, round {rounds}");
            tokens += outcomes.Sum(o => o.Tokens.Length);
            rounds++;
        }
        while (!stop.IsCompleted);
        await stop;
        return (rounds, tokens, sw.Elapsed);
    }

    /// <summary>Waits until plan change <paramref name="operationId"/> completed; fails the test when it failed. Waits on the
    /// placement grain's change notification (every operation state change bumps its generation), not on a timer.</summary>
    public async Task<PlacementOperation> WaitForOperationAsync(string operationId, TimeSpan timeout)
    {
        var grain = Cluster.Placement.PlacementGrain;
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            // The generation is read before the operation: a change in between makes the wait below return at once.
            long generation = (await grain.GetSnapshotAsync()).Generation;
            var op = await grain.GetOperationAsync(operationId) ?? throw new InvalidOperationException($"operation {operationId} unknown");
            if (op.State == OperationState.Completed)
            {
                // The coordinator routes with the committed plan once its follower saw it.
                await EventuallyAsync(() => Task.FromResult(Cluster.Placement.Snapshot is { IsServing: true } s && s.Plan.Version >= op.TargetVersion), TimeSpan.FromSeconds(10));
                return op;
            }
            Assert.True(op.State != OperationState.Failed, $"operation {operationId} failed: {op.Error}");
            var left = deadline - DateTime.UtcNow;
            Assert.True(left > TimeSpan.Zero, $"operation {operationId} still {op.State} after {timeout.TotalSeconds:F0} s");
            await grain.WaitForChangeAsync(generation, left < TimeSpan.FromSeconds(10) ? left : TimeSpan.FromSeconds(10));
        }
    }

    /// <summary><paramref name="count"/> deterministic prompts and their greedy tokens with the experts in-process (the reference outputs).</summary>
    public static async Task<(List<int[]> Prompts, int[][] Tokens)> ReferenceAsync(int count, int maxTokens, string fixture = "tiny-maverick")
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), new CpuKernelBackend(1));
        var prompts = Prompts(count, engine.Config.VocabSize);
        await using var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions { MaxRunningSequences = 16, MaxBatchTokens = 256, PrefillChunkTokens = 64 });
        var tasks = prompts.Select(async (p, i) =>
        {
            var tokens = new List<int>();
            await foreach (var t in scheduler.GenerateAsync(new GenerationRequest($"ref{i}", p, maxTokens, SamplingParams.Greedy), CancellationToken.None))
            {
                tokens.Add(t.TokenId);
            }
            return tokens.ToArray();
        });
        return (prompts, await Task.WhenAll(tasks));
    }

    /// <summary>Asserts every request completed without error and produced exactly the reference tokens.</summary>
    public static void AssertIdentical(int[][] reference, RequestOutcome[] outcomes, string what)
    {
        var failed = outcomes.Select((o, i) => (o, i)).Where(x => x.o.Error is not null).ToList();
        Assert.True(failed.Count == 0, $"{what}: {failed.Count} requests failed: " + string.Join(" | ", failed.Select(f => $"r{f.i}: {f.o.Error!.GetType().Name}: {f.o.Error.Message}")));
        for (int i = 0; i < reference.Length; i++)
        {
            Assert.True(reference[i].SequenceEqual(outcomes[i].Tokens),
                $"{what}: request {i} produced [{string.Join(",", outcomes[i].Tokens)}], reference [{string.Join(",", reference[i])}]");
        }
    }

    /// <summary>Polls <paramref name="condition"/> every 100 ms until it holds (returns true) or <paramref name="timeout"/>
    /// passes (false); a condition that throws (e.g. a grain call routed to a silo that just died) counts as false.</summary>
    public static async Task<bool> EventuallyAsync(Func<Task<bool>> condition, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                if (await condition())
                {
                    return true;
                }
            }
            catch (Exception ex) when (ex is Orleans.Runtime.OrleansException or TimeoutException or InvalidOperationException)
            {
                // Not yet.
            }
            if (DateTime.UtcNow >= deadline)
            {
                return false;
            }
            await Task.Delay(100);
        }
    }

    /// <summary>Deterministic prompts of varied lengths inside the vocabulary.</summary>
    public static List<int[]> Prompts(int count, int vocab, int seed = 7)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(i => Enumerable.Range(0, 3 + (i * 5 % 17)).Select(_ => rng.Next(1, vocab)).ToArray())];
    }

    public async ValueTask DisposeAsync()
    {
        await Scheduler.DisposeAsync();
        Engine.Dispose();
        await Cluster.DisposeAsync();
        _loggerFactory.Dispose();
    }
}

/// <summary>One request's outcome.</summary>
internal sealed record RequestOutcome(int[] Tokens, Exception? Error, TimeSpan Elapsed);
