using Distributed.ExpertWorker.Diagnostics;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Tests.Diagnostics;

[Trait("Category", "Unit")]
public sealed class ExpertWorkerInstrumentsTests
{
    [Theory]
    [InlineData(ShardState.Serving, 3, null)]
    [InlineData(ShardState.Empty, 3, null)]
    [InlineData(ShardState.Empty, 0, "waiting for a placement plan")]
    [InlineData(ShardState.Loading, 2, "loading the experts of plan 2+")]
    [InlineData(ShardState.Warming, 2, "warming the experts of plan 2+")]
    [InlineData(ShardState.Failed, 2, "failed to load its shard: disk gone")]
    [InlineData(ShardState.Staged, 2, null)]
    [InlineData(ShardState.Staged, 0, "shard state Staged")]
    public void NotReadyReason_FollowsTheShardState(ShardState state, long planVersion, string? expected)
    {
        var status = new ShardStatus("w", planVersion, state, state == ShardState.Serving ? 4 : 0, 0, state == ShardState.Failed ? "disk gone" : null);
        Assert.Equal(expected, ExpertWorkerInstruments.NotReadyReason(status));
    }
}
