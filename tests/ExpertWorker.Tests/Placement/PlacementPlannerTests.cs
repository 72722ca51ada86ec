using Distributed.ExpertWorker.Placement;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Tests.Placement;

public class PlacementPlannerTests
{
    private static readonly ModelDescriptor Model = new("fp", HiddenSize: 8, IntermediateSize: 4, NumLayers: 6, NumExperts: 16, MoeLayers: [1, 3, 5]);

    private static WorkerDescriptor Worker(string id, long memory = 0) => new(id, $"http://127.0.0.1/{id}", "", "h", memory, Model);

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void EqualWorkers_GetBalancedShards_EveryLayerSpreadOverAll(int n)
    {
        var workers = Enumerable.Range(0, n).Select(i => Worker($"w{i}")).Reverse().ToArray();
        var plan = PlacementPlanner.Build(3, Model, workers, replication: 1, createdUnixMs: 0);
        Assert.True(plan.CoversAllExperts);
        Assert.Equal(Enumerable.Range(0, n).Select(i => $"w{i}"), plan.Workers.Select(w => w.WorkerId));
        var counts = Enumerable.Range(0, n).Select(i => plan.ShardOf(i).Count).ToArray();
        Assert.True(counts.Max() - counts.Min() <= 1, string.Join(",", counts));
        foreach (var layer in plan.Layers)
        {
            var perWorker = Enumerable.Range(0, n).Select(w => layer.Replicas.Count(r => r[0] == w)).ToArray();
            Assert.True(perWorker.Max() - perWorker.Min() <= 1, $"layer {layer.Layer}: {string.Join(",", perWorker)}");
        }
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Plans_AreDeterministic()
    {
        var a = PlacementPlanner.Build(1, Model, [Worker("b"), Worker("a"), Worker("c")], 1, 0);
        var b = PlacementPlanner.Build(1, Model, [Worker("c"), Worker("b"), Worker("a")], 1, 0);
        Assert.Equal(PlacementPlanCodec.Serialize(a), PlacementPlanCodec.Serialize(b));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Memory_WeightsTheShares_AndCapsThem()
    {
        long e = Model.ExpertBytes;
        var plan = PlacementPlanner.Build(1, Model, [Worker("big", 36 * e), Worker("small", 12 * e)], 1, 0);
        Assert.True(plan.CoversAllExperts);
        Assert.Equal(36, plan.ShardOf(0).Count);
        Assert.Equal(12, plan.ShardOf(1).Count);

        var tooSmall = PlacementPlanner.Build(2, Model, [Worker("a", 10 * e), Worker("b", 10 * e)], 1, 0);
        Assert.False(tooSmall.CoversAllExperts);
        Assert.Equal(10, tooSmall.ShardOf(0).Count);
        Assert.Equal(10, tooSmall.ShardOf(1).Count);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Replication_PutsCopiesOnDistinctWorkers()
    {
        var plan = PlacementPlanner.Build(1, Model, [Worker("a"), Worker("b"), Worker("c")], replication: 2, 0);
        Assert.All(plan.Layers.SelectMany(l => l.Replicas), r =>
        {
            Assert.Equal(2, r.Length);
            Assert.NotEqual(r[0], r[1]);
        });
        var single = PlacementPlanner.Build(1, Model, [Worker("a")], replication: 3, 0);
        Assert.All(single.Layers.SelectMany(l => l.Replicas), r => Assert.Single(r));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void NoWorkers_GivesAPlanThatDoesNotCover()
    {
        var plan = PlacementPlanner.Build(1, Model, [], 1, 0);
        Assert.False(plan.CoversAllExperts);
        Assert.False(new PlacementSnapshot(plan, [], 1).IsServing);
    }
}
