using Distributed.Protocol.Grains;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Chaos;

/// <summary>
/// Live plan changes under load with real processes: workers join (experts spread onto them, staged then committed)
/// and are drained then stopped, while concurrent requests keep flowing; no request fails and every one produces the
/// reference greedy tokens (fp32 wire); a drained worker releases its experts' memory.
/// </summary>
[Trait("Category", "Integration")]
public sealed class ScalingTests(ITestOutputHelper output)
{
    private const int MaxTokens = 12;

    [Fact]
    public async Task ScaleTwoToFourAndBack_UnderLoad_ZeroFailures_IdenticalTokens_DrainedWorkersFreeMemory()
    {
        var log = new TestLog { Output = output };
        var (prompts, reference) = await ChaosCluster.ReferenceAsync(6, MaxTokens);
        await using var chaos = await ChaosCluster.StartAsync(log, workers: 2);
        var placement = chaos.Cluster.Placement;
        var grain = placement.PlacementGrain;
        long v0 = (long)placement.GetServingTable().Version;

        var scaleUp = Task.Run(async () =>
        {
            await chaos.Cluster.StartWorkerAsync(2, CancellationToken.None);
            await chaos.Cluster.StartWorkerAsync(3, CancellationToken.None);
            Assert.True(await ChaosCluster.EventuallyAsync(() => Task.FromResult(placement.Snapshot is { IsServing: true } s
                && s.Plan.Workers.Length == 4 && Enumerable.Range(0, 4).All(i => s.Plan.ShardOf(i).Count > 0)), TimeSpan.FromSeconds(60)),
                "4 workers never all held experts");
        });
        var up = await chaos.LoadUntilAsync(prompts, reference, MaxTokens, scaleUp, "scale 2 -> 4");
        long v1 = (long)placement.GetServingTable().Version;
        output.WriteLine($"scale-up: plan {v0} -> {v1} under {up.Rounds} rounds ({up.Tokens} tokens, {up.Tokens / up.Elapsed.TotalSeconds:F1} tok/s)");
        Assert.True(v1 > v0);

        var scaleDown = Task.Run(async () =>
        {
            foreach (var w in new[] { "worker-3", "worker-2" })
            {
                var result = await grain.DrainWorkerAsync(w);
                Assert.Null(result.Error);
                await chaos.WaitForOperationAsync(result.Operation!.Id, TimeSpan.FromSeconds(60));
            }
        });
        var down = await chaos.LoadUntilAsync(prompts, reference, MaxTokens, scaleDown, "drain 4 -> 2");
        output.WriteLine($"drain: plan {v1} -> {placement.GetServingTable().Version} under {down.Rounds} rounds ({down.Tokens} tokens)");

        var view = await grain.GetClusterAsync();
        foreach (var w in view.Workers)
        {
            output.WriteLine($"{w.Descriptor.WorkerId}: {w.State}, {w.ExpertsAssigned} experts, resident {w.LastStatus?.ResidentBytes} bytes");
        }
        Assert.All(view.Workers.Where(w => w.Descriptor.WorkerId is "worker-2" or "worker-3"), w => Assert.Equal(WorkerState.Drained, w.State));
        // Released once the retire delay passed: resident bytes of the drained workers drop to zero.
        Assert.True(await ChaosCluster.EventuallyAsync(async () =>
        {
            var statuses = await Task.WhenAll(new[] { "worker-2", "worker-3" }.Select(w => placement.ClusterClient.GetGrain<IExpertShardGrain>(w).GetStatusAsync()));
            return statuses.All(s => s.ResidentBytes == 0 && s.Experts == 0);
        }, TimeSpan.FromSeconds(30)), "drained workers still hold expert memory");

        var stop = Task.Run(async () =>
        {
            foreach (int i in new[] { 3, 2 })
            {
                chaos.Cluster.Workers[i].Terminate();
                await chaos.Cluster.Workers[i].WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
            }
        });
        var stopped = await chaos.LoadUntilAsync(prompts, reference, MaxTokens, stop, "stop drained workers");
        output.WriteLine($"stopped drained workers under {stopped.Rounds} rounds; plan {placement.GetServingTable().Version}; recoveries {chaos.Dispatcher.Recoveries}");
        Assert.Equal(0, chaos.Dispatcher.Recoveries);
        Assert.Equal(2, placement.GetServingTable().Workers.Count(w => w.WorkerId is "worker-0" or "worker-1"));
    }
}
