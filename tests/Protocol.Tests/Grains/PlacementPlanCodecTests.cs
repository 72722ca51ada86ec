using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.Protocol.Tests.Grains;

public class PlacementPlanCodecTests
{
    private static readonly ModelDescriptor Model = new("f00d", 4, 8, 4, 3, [1, 3]);

    private static PlacementPlan Plan() => new(
        Version: 9,
        Model: Model,
        Workers:
        [
            new WorkerDescriptor("a", "http://127.0.0.1:1", "S127.0.0.1:11:1", "h", 1 << 20, Model),
            new WorkerDescriptor("b", "http://127.0.0.1:2", "S127.0.0.1:12:1", "h", 1 << 20, Model),
        ],
        Layers: [new LayerPlacement(1, [[0], [1], [0, 1]]), new LayerPlacement(3, [[1], [0], [1]])],
        CreatedUnixMs: 123);

    [Fact]
    [Trait("Category", "Unit")]
    public void RoundTrip_PreservesThePlan()
    {
        var plan = Plan();
        var back = PlacementPlanCodec.Deserialize(PlacementPlanCodec.Serialize(plan));
        Assert.Equal(9, back.Version);
        Assert.Equal(Model.Fingerprint, back.Model!.Fingerprint);
        Assert.Equal(Model.MoeLayers, back.Model.MoeLayers);
        Assert.Equal(["a", "b"], back.Workers.Select(w => w.WorkerId));
        Assert.Equal([0, 1], back.Layers[0].Replicas[2]);
        Assert.True(back.CoversAllExperts);
        Assert.Equal(new[] { new ExpertKey(1, 0), new ExpertKey(1, 2), new ExpertKey(3, 1) }, back.ShardOf(0).Experts);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void BadBytes_AreFormatErrors()
    {
        Assert.Throws<FormatException>(() => PlacementPlanCodec.Deserialize(new byte[] { 1, 2, 3 }));
        byte[] bytes = PlacementPlanCodec.Serialize(Plan());
        Assert.Throws<FormatException>(() => PlacementPlanCodec.Deserialize(bytes.AsMemory(0, bytes.Length - 5)));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void InconsistentPlan_IsRejected()
    {
        var bad = Plan() with { Layers = [new LayerPlacement(1, [[0], [7], [0]]), new LayerPlacement(3, [[1], [0], [1]])] };
        var ex = Assert.Throws<FormatException>(() => PlacementPlanCodec.Deserialize(PlacementPlanCodec.Serialize(bad)));
        Assert.Contains("outside", ex.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Snapshot_IsServingOnlyWhenAllWorkersReady()
    {
        var plan = Plan();
        Assert.False(new PlacementSnapshot(plan, ["a"], 1).IsServing);
        Assert.True(new PlacementSnapshot(plan, ["a", "b"], 2).IsServing);
        var partial = plan with { Layers = [new LayerPlacement(1, [[0], [], [0]]), plan.Layers[1]] };
        Assert.False(new PlacementSnapshot(partial, ["a", "b"], 3).IsServing);
    }
}
