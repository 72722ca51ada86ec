using Distributed.Coordinator.Moe;

namespace Distributed.Coordinator.Tests.Moe;

[Trait("Category", "Unit")]
public sealed class DispatchPlanTests
{
    [Fact]
    public void Build_GroupsRowsByExpertThenTokenThenSlot()
    {
        // tokens x top2: t0 -> (3, 1), t1 -> (1, 0), t2 -> (3, 0)
        int[] ids = [3, 1, 1, 0, 3, 0];
        float[] w = [0.5f, 0.25f, 1f, 2f, 3f, 4f];
        var plan = DispatchPlan.Build(new RoutingResult(ids, w, 2), numExperts: 4);

        Assert.Equal(3, plan.Tokens);
        Assert.Equal([0, 1, 3], plan.Experts);
        Assert.Equal([2, 2, 2], plan.RowCounts);
        Assert.Equal([1, 2, 0, 1, 0, 2], plan.PairTokens);
        Assert.Equal([1, 1, 1, 0, 0, 0], plan.PairSlots);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(4)]
    public void Build_ExpertOutOfRange_Throws(int bad)
    {
        var ex = Assert.Throws<ArgumentException>(() => DispatchPlan.Build(new RoutingResult(new[] { 0, bad }, new[] { 1f, 1f }, 1), 4));
        Assert.Contains($"expert id {bad}", ex.Message);
    }

    [Fact]
    public void Build_MismatchedArrays_Throws()
    {
        Assert.Throws<ArgumentException>(() => DispatchPlan.Build(new RoutingResult(new[] { 0, 1 }, new[] { 1f }, 1), 4));
        Assert.Throws<ArgumentException>(() => DispatchPlan.Build(new RoutingResult(new[] { 0, 1, 2 }, new[] { 1f, 1f, 1f }, 2), 4));
    }

    [Fact]
    public void GatherAndCombine_ScaleInputsAndSumSlotsInOrder()
    {
        const int h = 2;
        int[] ids = [1, 0, 0, 1];
        float[] w = [2f, 3f, 5f, 7f];
        float[] hidden = [1f, 10f, 100f, 1000f];
        var plan = DispatchPlan.Build(new RoutingResult(ids, w, 2), 2);
        var rows = new float[plan.Rows * h];
        plan.GatherScaled(hidden, h, w, rows);
        // grouped order: expert 0 rows (t0 s1, t1 s0), expert 1 rows (t0 s0, t1 s1)
        Assert.Equal([3f, 30f, 500f, 5000f, 2f, 20f, 700f, 7000f], rows);

        var output = new float[plan.Tokens * h];
        plan.Combine(rows, h, output);
        Assert.Equal([2f + 3f, 20f + 30f, 500f + 700f, 5000f + 7000f], output);
    }

    [Fact]
    public void Combine_TopOne_IsExactCopy()
    {
        const int h = 3;
        int[] ids = [2, 0, 2];
        var plan = DispatchPlan.Build(new RoutingResult(ids, new[] { 1f, 1f, 1f }, 1), 3);
        float[] expertOut = [0.1f, 0.2f, 0.3f, 1.1f, 1.2f, 1.3f, 2.1f, 2.2f, 2.3f];
        var output = new float[9];
        plan.Combine(expertOut, h, output);
        // grouped: expert 0 -> t1, expert 2 -> t0, t2
        Assert.Equal([1.1f, 1.2f, 1.3f, 0.1f, 0.2f, 0.3f, 2.1f, 2.2f, 2.3f], output);
    }
}
