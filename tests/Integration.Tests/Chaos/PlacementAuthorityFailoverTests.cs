using Distributed.Hosting;
using System.Collections.Concurrent;
using System.Globalization;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Checkpoint;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Chaos;

/// <summary>
/// The multi-host failure that matters most: SIGKILL of the worker whose silo hosts the placement grain (the cluster's
/// placement authority), mid-generation, with each durable cluster store: Redis (membership + Redis grain storage) and
/// PostgreSQL (the project's schema: ADO.NET membership + <c>PostgresGrainStorage</c>). Orleans must re-activate the
/// grain on a survivor from the persisted plan (versions continue, never restart at 1), the new activation must see
/// the dead silo and re-place its experts, the coordinator must route every in-flight request onto the new plan, and
/// every request must finish with exactly the tokens it produces without the failure.
/// </summary>
[Trait("Category", "Integration")]
public sealed class PlacementAuthorityFailoverTests(ITestOutputHelper output)
{
    private const int MaxTokens = 16;

    [RedisFact]
    public async Task KilledPlacementAuthoritySilo_Redis_GrainRestoredOnSurvivor_RequestsCompleteIdentically()
    {
        ToolFactAttribute.Require(RedisServer.Missing);
        await using var redis = await RedisServer.StartAsync(new TestLog { Output = output }.Write);
        await RunAsync(["--clustering", "Redis", "--redis", redis.Connection],
            clusterId => new ExpertClusterOptions { Clustering = ClusteringMode.Redis, RedisConnectionString = redis.Connection, ClusterId = clusterId });
    }

    [PostgresFact]
    public async Task KilledPlacementAuthoritySilo_Postgres_GrainRestoredOnSurvivor_RequestsCompleteIdentically()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        // An empty database: the first worker applies the schema.
        string db = await pg.CreateDatabaseAsync("failover");
        await RunAsync(["--clustering", "AdoNet", "--Cluster:AdoNetConnectionString", db],
            clusterId => new ExpertClusterOptions { Clustering = ClusteringMode.AdoNet, AdoNetConnectionString = db, ClusterId = clusterId });
    }

    private async Task RunAsync(string[] membership, Func<string, ExpertClusterOptions> clientOptions)
    {
        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        var (prompts, reference) = await ChaosCluster.ReferenceAsync(8, MaxTokens);
        string fixture = TestPaths.Fixture("tiny-maverick");
        string clusterId = $"authority-{Guid.NewGuid():N}";
        int[] ports = WorkerProcess.FreePorts(6);
        var lines = new ConcurrentDictionary<string, ConcurrentQueue<string>>();
        var workers = new List<WorkerProcess>();
        WorkerProcess StartWorker(int i)
        {
            string name = $"r{i}";
            var sink = lines.GetOrAdd(name, _ => new ConcurrentQueue<string>());
            return WorkerProcess.Start(WorkerProcess.LocateWorker(),
                ["--model", fixture, "--worker-id", name, "--threads", "1", .. membership,
                 "--cluster-id", clusterId, "--silo-port", ports[2 * i].ToString(CultureInfo.InvariantCulture),
                 "--gateway-port", ports[2 * i + 1].ToString(CultureInfo.InvariantCulture),
                 "--Placement:SettleDelay", "00:00:00.2", "--ExpertWorker:RetireDelay", "00:00:01",
                 "--Cluster:ProbeTimeout", "00:00:01", "--Cluster:NumMissedProbesLimit", "2", "--Placement:ProbeTimeout", "00:00:01"],
                name, line =>
                {
                    sink.Enqueue(line);
                    log.Write(line);
                });
        }
        try
        {
            // r0 alone first: the first plan call activates the placement grain on it, where it stays until r0 dies.
            workers.Add(StartWorker(0));
            await workers[0].WaitReadyAsync(TimeSpan.FromSeconds(90), CancellationToken.None);
            await using var follower = await ClusterPlacementFollower.StartAsync(clientOptions(clusterId), loggerFactory);
            follower.RecoveryTimeout = TimeSpan.FromSeconds(90);
            await follower.WaitForServingAsync(1, TimeSpan.FromSeconds(60), CancellationToken.None);
            workers.Add(StartWorker(1));
            workers.Add(StartWorker(2));
            await Task.WhenAll(workers.Skip(1).Select(w => w.WaitReadyAsync(TimeSpan.FromSeconds(90), CancellationToken.None)));
            var before = await follower.WaitForServingAsync(3, TimeSpan.FromSeconds(60), CancellationToken.None);
            Assert.Contains(lines["r0"], l => l.Contains("Placement plan", StringComparison.Ordinal) && l.Contains("active", StringComparison.Ordinal));
            Assert.DoesNotContain(lines["r1"], l => l.Contains("PlacementGrain", StringComparison.Ordinal));
            Assert.DoesNotContain(lines["r2"], l => l.Contains("PlacementGrain", StringComparison.Ordinal));
            output.WriteLine($"plan {before.Version} over {string.Join(", ", before.Workers.Select(w => w.WorkerId))}; the placement grain runs on r0");

            ModelDescriptor model;
            using (var checkpoint = CheckpointReader.Open(fixture))
            {
                model = ModelDescriptors.FromCheckpoint(checkpoint);
            }
            var distribution = new DistributionOptions { WireDType = WireDType.Fp32, DispatchTimeout = TimeSpan.FromSeconds(20), RecoveryTimeout = TimeSpan.FromSeconds(90) };
            await using var pool = new WorkerChannelPool(model, distribution, loggerFactory.CreateLogger<WorkerChannelPool>());
            var dispatcher = new GrpcExpertDispatcher(follower, pool, loggerFactory.CreateLogger<GrpcExpertDispatcher>());
            using var engine = Llama4Engine.Load(fixture, new CpuKernelBackend(1), dispatcher);
            await using var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions { MaxRunningSequences = 16, MaxBatchTokens = 256, PrefillChunkTokens = 64 },
                loggerFactory.CreateLogger<ContinuousBatchScheduler>());

            int killAt = prompts.Count * MaxTokens / 4;
            bool killed = false;
            var outcomes = await ChaosCluster.RunAsync(scheduler, prompts, MaxTokens, n =>
            {
                if (n == killAt)
                {
                    workers[0].Kill();
                    killed = true;
                    log.Write($"killed r0 (placement authority) after {n} tokens");
                }
            });
            Assert.True(killed);
            ChaosCluster.AssertIdentical(reference, outcomes, "r0, the placement authority's silo, killed mid-generation");

            // The grain came back on a survivor with the persisted plan, and the plan no longer holds r0.
            var after = follower.GetServingTable();
            output.WriteLine($"plan {before.Version} -> {after.Version} over {string.Join(", ", after.Workers.Select(w => w.WorkerId))}; recoveries {dispatcher.Recoveries}, slices re-sent {dispatcher.ResentSlices}");
            Assert.True(after.Version > before.Version, $"plan version went from {before.Version} to {after.Version}: the restored grain must continue the persisted versions");
            Assert.DoesNotContain(after.Workers, w => w.WorkerId == "r0");
            Assert.True(after.CoversAllExperts);
            Assert.True(dispatcher.Recoveries >= 1, "the coordinator never recovered onto a plan without r0");
            Assert.Contains(lines["r1"].Concat(lines["r2"]), l => l.Contains("PlacementGrain", StringComparison.Ordinal));
            var operations = new List<Protocol.Grains.PlacementOperation>();
            for (int id = 1; await follower.PlacementGrain.GetOperationAsync($"op-{id}") is { } op; id++)
            {
                operations.Add(op);
            }
            output.WriteLine("operations: " + string.Join(" | ", operations.Select(o => $"{o.Id} {o.Kind} {o.State} v{o.TargetVersion} {o.Error}")));
            Assert.Contains(operations, o => o.Kind == Protocol.Grains.PlanChangeKind.Repair && o.State == Protocol.Grains.OperationState.Completed && (ulong)o.TargetVersion == after.Version);
            // Operations issued before the failover are still in the log: the state came from the store, not from scratch.
            Assert.Contains(operations, o => o.Kind == Protocol.Grains.PlanChangeKind.Initial);

            // And the cluster keeps serving.
            var again = await ChaosCluster.RunAsync(scheduler, prompts, MaxTokens);
            ChaosCluster.AssertIdentical(reference, again, "after the placement authority moved");
        }
        finally
        {
            foreach (var w in workers)
            {
                await w.DisposeAsync();
            }
        }
    }
}
