using Distributed.ExpertWorker.Placement;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Tests.Placement;

public class PlacementEditorTests
{
    private static readonly ModelDescriptor Model = new("fp", HiddenSize: 8, IntermediateSize: 4, NumLayers: 4, NumExperts: 12, MoeLayers: [1, 3]);
    private static readonly HashSet<string> None = new(StringComparer.Ordinal);

    private static WorkerDescriptor Worker(string id, long experts = 0) => new(id, $"http://127.0.0.1/{id}", "", "h", experts * Model.ExpertBytes, Model);

    private static PlacementDraft Draft(params WorkerDescriptor[] workers)
        => PlacementDraft.FromPlan(PlacementPlanner.Build(1, Model, workers, 1, 0), Model, workers);

    private static int[] PerLayer(PlacementDraft d, int li, IEnumerable<string> workers) => [.. workers.Select(w => d.HeldInLayer(li, w))];

    [Fact]
    [Trait("Category", "Unit")]
    public void Repair_GivesOrphansToSurvivors_LeastFilledFirst_AndReportsWhatDoesNotFit()
    {
        var a = Worker("a");
        var b = Worker("b");
        var c = Worker("c");
        var plan = PlacementPlanner.Build(1, Model, [a, b, c], 1, 0);
        var survivors = PlacementDraft.FromPlan(plan, Model, [a, b]);
        Assert.Equal(8, survivors.Orphans().Count());
        var keptA = survivors.Copies().Where(x => x.WorkerId == "a").ToHashSet();
        Assert.Empty(PlacementEditor.Repair(survivors, None));
        Assert.Empty(survivors.Orphans());
        Assert.Equal(12, survivors.Held("a"));
        Assert.Equal(12, survivors.Held("b"));
        Assert.Subset(survivors.Copies().Where(x => x.WorkerId == "a").ToHashSet(), keptA);

        var small = PlacementDraft.FromPlan(plan, Model, [Worker("a", 9), b with { MemoryCapacityBytes = 9 * Model.ExpertBytes }]);
        var unplaced = PlacementEditor.Repair(small, None);
        Assert.Equal(8 - 2, unplaced.Count);
        Assert.Equal(9, small.Held("a"));
        Assert.Equal(9, small.Held("b"));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void SpreadTo_GivesJoinersAnEvenShareOfEveryLayer_MovingOnlyWhatIsNeeded()
    {
        var d = Draft(Worker("a"), Worker("b"));
        var before = d.Copies().ToHashSet();
        var joined = PlacementDraft.FromPlan(d.ToPlan(1, 0), Model, [Worker("a"), Worker("b"), Worker("c"), Worker("d")]);
        int moved = PlacementEditor.SpreadTo(joined, ["c", "d"], None);
        Assert.Equal(12, moved);
        for (int li = 0; li < 2; li++)
        {
            Assert.Equal([3, 3, 3, 3], PerLayer(joined, li, ["a", "b", "c", "d"]));
        }
        Assert.Equal(24 - 12, joined.Copies().Count(before.Contains));
        Assert.Empty(joined.Orphans());
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Drain_MovesEveryCopyElsewhere_OrRefusesNamingTheExperts()
    {
        var d = Draft(Worker("a"), Worker("b"), Worker("c"));
        Assert.Null(PlacementEditor.Drain(d, "b", new HashSet<string> { "b" }));
        Assert.Equal(0, d.Held("b"));
        Assert.Equal(12, d.Held("a"));
        Assert.Equal(12, d.Held("c"));
        Assert.Empty(d.Orphans());

        var alone = Draft(Worker("a"));
        var error = PlacementEditor.Drain(alone, "a", new HashSet<string> { "a" });
        Assert.Equal(PlanChangeError.LastHolder, error!.Code);
        Assert.Contains("L1.E0", error.Message);

        var tight = Draft(Worker("a", 12), Worker("b", 13));
        error = PlacementEditor.Drain(tight, "a", new HashSet<string> { "a" });
        Assert.Equal(PlanChangeError.InsufficientMemory, error!.Code);
        Assert.Contains("and 7 more experts", error.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void ChangeReplicas_AddsAndRemoves_AndEveryBadChangeIsNamed()
    {
        var d = Draft(Worker("a"), Worker("b", 13));
        string holder = d.HoldersOf(0, 0)[0];
        string other = holder == "a" ? "b" : "a";
        Assert.Null(PlacementEditor.ChangeReplicas(d, [new ReplicaChange(1, 0, other, true), new ReplicaChange(1, 1, null, true)], None));
        Assert.Equal([holder, other], d.HoldersOf(0, 0));
        Assert.Equal(2, d.HoldersOf(0, 1).Count);
        Assert.Null(PlacementEditor.ChangeReplicas(d, [new ReplicaChange(1, 0, other, false)], None));
        Assert.Equal([holder], d.HoldersOf(0, 0));

        (ReplicaChange Change, string Code, string Field)[] bad =
        [
            (new ReplicaChange(0, 0, null, true), PlanChangeError.UnknownExpert, "add[0].layer"),
            (new ReplicaChange(1, 12, null, true), PlanChangeError.UnknownExpert, "add[0].expert"),
            (new ReplicaChange(1, -1, null, false), PlanChangeError.UnknownExpert, "remove[0].expert"),
            (new ReplicaChange(1, 2, "zz", true), PlanChangeError.UnknownWorker, "add[0].worker"),
            (new ReplicaChange(1, 0, holder, true), PlanChangeError.InvalidArgument, "add[0].worker"),
            (new ReplicaChange(1, 0, null, false), PlanChangeError.LastHolder, "remove[0]"),
        ];
        foreach (var (change, code, field) in bad)
        {
            var error = PlacementEditor.ChangeReplicas(Draft(Worker("a"), Worker("b")), [change], None);
            Assert.Equal((code, field), (error!.Code, error.Field));
        }
        var full = Draft(Worker("a", 12), Worker("b", 12));
        string h = full.HoldersOf(0, 3)[0];
        var noRoom = PlacementEditor.ChangeReplicas(full, [new ReplicaChange(1, 3, h == "a" ? "b" : "a", true)], None);
        Assert.Equal((PlanChangeError.InsufficientMemory, "add[0]"), (noRoom!.Code, noRoom.Field));
        Assert.Contains("memory fits 12", noRoom.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Rebalance_ReplicatesTheHotExpert_AndBalancesMeasuredLoad_WithinMemory()
    {
        var current = Draft(Worker("a"), Worker("b"), Worker("c"));
        var tokens = Enumerable.Repeat(10L, 12).ToArray();
        tokens[4] = 300;
        LayerLoad[] load = [new LayerLoad(1, tokens), new LayerLoad(3, tokens)];
        var before = PlacementEditor.Balance(current, load, None);
        var (draft, error) = PlacementEditor.Rebalance(current, load, extraReplicasPerLayer: 2, None);
        Assert.Null(error);
        var after = PlacementEditor.Balance(draft!, load, None);
        Assert.Equal(3, draft!.HoldersOf(0, 4).Count);
        Assert.Empty(draft.Orphans());
        Assert.True(after.MaxOverMean < before.MaxOverMean, $"{after.MaxOverMean} !< {before.MaxOverMean}");
        Assert.True(after.MaxOverMean < 1.1, after.MaxOverMean.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(1.0, after.WorkerLoad.Values.Sum(), 6);

        var uniform = PlacementEditor.Balance(current, [], None);
        Assert.Equal(1.0, uniform.MaxOverMean, 9);

        var (tight, tightError) = PlacementEditor.Rebalance(Draft(Worker("a", 12), Worker("b", 12)), load, null, None);
        Assert.Null(tightError);
        Assert.Equal(24, tight!.Copies().Count());
        var (_, tooSmall) = PlacementEditor.Rebalance(PlacementDraft.Empty(Model, [Worker("a", 11), Worker("b", 12)]), load, null, None);
        Assert.Equal(PlanChangeError.InsufficientMemory, tooSmall!.Code);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void TopUp_RestoresTheReplicationFactor_OnWorkersWithoutACopy()
    {
        var plan = PlacementPlanner.Build(1, Model, [Worker("a"), Worker("b"), Worker("c")], 2, 0);
        var d = PlacementDraft.FromPlan(plan, Model, [Worker("a"), Worker("b")]);
        PlacementEditor.Repair(d, None);
        int added = PlacementEditor.TopUp(d, 2, None);
        Assert.True(added > 0);
        for (int li = 0; li < 2; li++)
        {
            for (int e = 0; e < 12; e++)
            {
                Assert.Equal(2, d.HoldersOf(li, e).Count);
            }
        }
    }
}
