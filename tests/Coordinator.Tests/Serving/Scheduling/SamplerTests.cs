using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;

namespace Distributed.Coordinator.Tests.Serving.Scheduling;

[Trait("Category", "Unit")]
public sealed class SamplerTests
{
    private static readonly float[] Logits = [0.5f, 3f, -1f, 3f, 2.5f, float.NegativeInfinity, 1f];

    [Fact]
    public void Greedy_IsArgmaxWithLowestIdOnTies() => Assert.Equal(1, new Sampler(SamplingParams.Greedy).Next(Logits));

    [Fact]
    public void TopKOne_AlwaysPicksTheBestLowestIdOnTies()
    {
        var s = new Sampler(new SamplingParams(1.5f, 1f, 1, 7));
        Assert.All(Enumerable.Range(0, 50), _ => Assert.Equal(1, s.Next(Logits)));
    }

    [Fact]
    public void TopK_OnlyDrawsFromTheKBest()
    {
        var s = new Sampler(new SamplingParams(5f, 1f, 3, 11));
        var seen = Enumerable.Range(0, 400).Select(_ => s.Next(Logits)).ToHashSet();
        Assert.Equal(new HashSet<int> { 1, 3, 4 }, seen);
    }

    [Fact]
    public void TopP_KeepsTheSmallestPrefixReachingP()
    {
        // softmax at T=1: ids 1 and 3 hold ~0.35 each, so top_p 0.6 keeps exactly those two.
        var s = new Sampler(new SamplingParams(1f, 0.6f, 0, 3));
        var seen = Enumerable.Range(0, 400).Select(_ => s.Next(Logits)).ToHashSet();
        Assert.Equal(new HashSet<int> { 1, 3 }, seen);
    }

    [Fact]
    public void PlainTemperature_FollowsTheSoftmaxAndNeverPicksMinusInfinity()
    {
        var s = new Sampler(new SamplingParams(1f, 1f, 0, 5));
        var counts = new int[Logits.Length];
        for (int i = 0; i < 20000; i++)
        {
            counts[s.Next(Logits)]++;
        }
        double z = Logits.Where(float.IsFinite).Sum(l => Math.Exp(l));
        for (int id = 0; id < Logits.Length; id++)
        {
            double expected = float.IsFinite(Logits[id]) ? Math.Exp(Logits[id]) / z : 0;
            Assert.InRange(counts[id] / 20000.0, expected - 0.02, expected + 0.02);
        }
    }
}
