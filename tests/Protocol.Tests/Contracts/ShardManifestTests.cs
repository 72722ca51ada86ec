using Distributed.Protocol.Contracts;

namespace Distributed.Protocol.Tests.Contracts;

public class ShardManifestTests
{
    private static readonly ModelDescriptor Model = new("f", 4, 8, 6, 16, [1, 3, 5]);

    [Fact]
    [Trait("Category", "Unit")]
    public void All_HoldsEveryExpertOfEveryMoeLayer()
    {
        var shard = ShardManifest.Parse("all", Model);
        Assert.Equal(48, shard.Count);
        Assert.True(shard.Contains(new ExpertKey(5, 15)));
        Assert.False(shard.Contains(new ExpertKey(2, 0)));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Ranges_Parse()
    {
        var shard = ShardManifest.Parse("1:0-3, 3:7, *:15", Model);
        Assert.Equal([(1, new[] { 0, 1, 2, 3, 15 }), (3, new[] { 7, 15 }), (5, new[] { 15 })],
            shard.Layers.Select(l => (l.Layer, l.Experts)).ToArray());
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData("2:0")]
    [InlineData("1:16")]
    [InlineData("1:3-1")]
    [InlineData("1")]
    [InlineData("x:1")]
    [InlineData("1:-1")]
    public void BadSpecs_AreRejected(string spec)
    {
        var ex = Assert.Throws<FormatException>(() => ShardManifest.Parse(spec, Model));
        Assert.Contains(spec.Split(':')[0], ex.Message);
    }
}
