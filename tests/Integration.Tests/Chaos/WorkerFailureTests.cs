using System.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Scheduling;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Chaos;

/// <summary>
/// SIGKILL of a worker process during generation: the dispatch to it fails fast (connection loss), its rows go to a
/// replica or its experts are re-placed on the survivors, and every request completes with exactly the tokens it
/// produces without the failure; membership removes the dead silo; a restarted worker rejoins and gets experts again.
/// Without room for the lost experts, requests fail with a clear error instead of hanging.
/// </summary>
[Trait("Category", "Integration")]
public sealed class WorkerFailureTests(ITestOutputHelper output)
{
    private const int MaxTokens = 16;

    [Fact]
    public async Task KilledWorker_NoReplicas_RequestsCompleteIdentically_SiloRemoved_RestartedWorkerRejoins()
    {
        var log = new TestLog { Output = output };
        var (prompts, reference) = await ChaosCluster.ReferenceAsync(8, MaxTokens);
        await using var chaos = await ChaosCluster.StartAsync(log, workers: 3);
        var before = chaos.Cluster.Placement.GetServingTable();
        int killAt = prompts.Count * MaxTokens / 4;
        long killedAt = 0;
        var outcomes = await chaos.RunAsync(prompts, MaxTokens, n =>
        {
            if (n == killAt)
            {
                chaos.Cluster.KillWorker(2);
                killedAt = Stopwatch.GetTimestamp();
                log.Write($"killed worker-2 after {n} tokens");
            }
        });
        ChaosCluster.AssertIdentical(reference, outcomes, "worker-2 killed mid-generation");
        var after = chaos.Cluster.Placement.GetServingTable();
        output.WriteLine($"plan {before.Version} -> {after.Version}; recoveries {chaos.Dispatcher.Recoveries}, slices re-sent {chaos.Dispatcher.ResentSlices}");
        Assert.NotEqual(0, killedAt);
        Assert.True(chaos.Dispatcher.Recoveries >= 1, "the experts of the killed worker were never re-placed");
        Assert.DoesNotContain(after.Workers, w => w.WorkerId == "worker-2");
        Assert.True(after.CoversAllExperts);

        var management = chaos.Cluster.Placement.ClusterClient.GetGrain<IManagementGrain>(0);
        Assert.True(await ChaosCluster.EventuallyAsync(async () => (await management.GetHosts(onlyActive: true)).Count == 2, TimeSpan.FromSeconds(60)),
            "membership did not declare the killed silo dead");

        await chaos.Cluster.StartWorkerAsync(2, CancellationToken.None);
        Assert.True(await ChaosCluster.EventuallyAsync(() =>
        {
            var s = chaos.Cluster.Placement.Snapshot;
            int i = s?.Plan.IndexOf("worker-2") ?? -1;
            return Task.FromResult(s is { IsServing: true } && i >= 0 && s.Plan.ShardOf(i).Count > 0);
        }, TimeSpan.FromSeconds(60)), "the restarted worker was not given experts");
        output.WriteLine($"restarted worker-2 holds {chaos.Cluster.Placement.Snapshot!.Plan.ShardOf(chaos.Cluster.Placement.Snapshot.Plan.IndexOf("worker-2")).Count} experts in plan {chaos.Cluster.Placement.Snapshot.Plan.Version}");
        var again = await chaos.RunAsync(prompts, MaxTokens);
        ChaosCluster.AssertIdentical(reference, again, "after worker-2 rejoined");

        // Then rebalance from the load this coordinator measured, under load.
        var load = chaos.Dispatcher.Load;
        var request = new Protocol.Grains.RebalanceRequest([.. load.Model.MoeLayers.Select(l => new Protocol.Grains.LayerLoad(l, load.Layer(l).Total))], 1, DryRun: false);
        var rebalance = Task.Run(async () =>
        {
            var result = await chaos.Cluster.Placement.PlacementGrain.RebalanceAsync(request);
            Assert.Null(result.Error);
            output.WriteLine($"rebalance {result.Operation!.Id}: predicted max/mean {result.Before!.MaxOverMean:F3} -> {result.After!.MaxOverMean:F3}, {result.ExpertsMoved} copies loaded");
            await chaos.WaitForOperationAsync(result.Operation.Id, TimeSpan.FromSeconds(60));
        });
        var rounds = await chaos.LoadUntilAsync(prompts, reference, MaxTokens, rebalance, "rebalance after rejoin");
        output.WriteLine($"rebalanced under {rounds.Rounds} rounds of load");
    }

    [Fact]
    public async Task KilledWorker_WithReplicas_RowsGoToTheReplica_AndEveryReplicaServed()
    {
        var log = new TestLog { Output = output };
        var (prompts, reference) = await ChaosCluster.ReferenceAsync(8, MaxTokens);
        await using var chaos = await ChaosCluster.StartAsync(log, workers: 3, settings: new Dictionary<string, string> { ["Placement:ReplicationFactor"] = "2" });
        var table = chaos.Cluster.Placement.GetServingTable();
        Assert.All(table.Model.MoeLayers, l => Assert.Equal(2, table.OwnersOf(l, 0).Length));

        var warm = await chaos.RunAsync(prompts, MaxTokens);
        ChaosCluster.AssertIdentical(reference, warm, "replicated, no failure");
        foreach (var w in chaos.Dispatcher.Load.Workers)
        {
            output.WriteLine($"{w.WorkerId}: {w.Requests} requests, {w.Rows} rows, mean {w.MeanLatencyMs:F2} ms");
        }
        Assert.Equal(3, chaos.Dispatcher.Load.Workers.Count(w => w.Requests > 0));

        int killAt = prompts.Count * MaxTokens / 4;
        var outcomes = await chaos.RunAsync(prompts, MaxTokens, n =>
        {
            if (n == killAt)
            {
                chaos.Cluster.KillWorker(1);
            }
        });
        ChaosCluster.AssertIdentical(reference, outcomes, "worker-1 killed with 2 replicas per expert");
        output.WriteLine($"recoveries {chaos.Dispatcher.Recoveries}, slices re-sent {chaos.Dispatcher.ResentSlices}");
        Assert.True(chaos.Dispatcher.ResentSlices > 0, "nothing was re-sent: the kill did not hit a dispatch");
        Assert.Equal(0, chaos.Dispatcher.Recoveries);
    }

    [Fact]
    public async Task KilledWorker_NoRoomForItsExperts_RequestFailsWithClearError_NoHang()
    {
        var log = new TestLog { Output = output };
        Protocol.Contracts.ModelDescriptor model;
        using (var checkpoint = Checkpoint.CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            model = Checkpoint.ModelDescriptors.FromCheckpoint(checkpoint);
        }
        long half = (long)model.MoeLayers.Length * model.NumExperts / 2 * model.ExpertBytes;
        await using var chaos = await ChaosCluster.StartAsync(log, workers: 2, settings: new Dictionary<string, string> { ["ExpertWorker:MemoryCapacityBytes"] = half.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        var prompt = ChaosCluster.Prompts(1, chaos.Engine.Config.VocabSize)[0];
        await chaos.Engine.InferAsync(prompt, 2, CancellationToken.None);
        chaos.Cluster.KillWorker(1);
        var sw = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(() => chaos.Engine.InferAsync(prompt, 4, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(90)));
        output.WriteLine($"failed after {sw.ElapsedMilliseconds} ms: {ex.Status}: {ex.Message}");
        Assert.Equal(Grpc.Core.StatusCode.Unavailable, ex.Status);
        Assert.Contains("cannot be placed", ex.Message);
        var snapshot = chaos.Cluster.Placement.Snapshot!;
        Assert.False(snapshot.Plan.CoversAllExperts);
        Assert.Contains("memory", snapshot.Problem);
    }
}
