using Distributed.Coordinator.Distribution;

namespace Distributed.Coordinator.Tests.Admin;

/// <summary>The dispatcher's replica and recovery settings (issue #5).</summary>
public sealed class RecoveryOptionsTests
{
    [Fact]
    [Trait("Category", "Unit")]
    public void DefaultsShouldNotChange()
    {
        var o = new DistributionOptions();
        Assert.Equal(32, o.SplitRows);
        Assert.Equal(4, o.MaxDispatchAttempts);
        Assert.Equal(TimeSpan.FromSeconds(10), o.SuspectDuration);
        Assert.Equal(TimeSpan.FromSeconds(60), o.RecoveryTimeout);
        Assert.Empty(o.Validate());
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(1, 4, 10, 60, "Distribution:SplitRows")]
    [InlineData(32, 0, 10, 60, "Distribution:MaxDispatchAttempts")]
    [InlineData(32, 33, 10, 60, "Distribution:MaxDispatchAttempts")]
    [InlineData(32, 4, -1, 60, "Distribution:SuspectDuration")]
    [InlineData(32, 4, 10, 0, "Distribution:RecoveryTimeout")]
    public void InvalidValues_AreNamed(int splitRows, int attempts, int suspectSeconds, int recoverySeconds, string field)
    {
        var o = new DistributionOptions
        {
            SplitRows = splitRows,
            MaxDispatchAttempts = attempts,
            SuspectDuration = TimeSpan.FromSeconds(suspectSeconds),
            RecoveryTimeout = TimeSpan.FromSeconds(recoverySeconds),
        };
        Assert.Contains(o.Validate(), e => e.StartsWith(field, StringComparison.Ordinal));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public async Task StaticPlacement_CannotRecover_AndSaysWhy()
    {
        var model = new Protocol.Contracts.ModelDescriptor("fp", 8, 4, 2, 4, [1]);
        IPlacementSource source = new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(model, []));
        Assert.False(source.CanRecover);
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(async () => await source.RecoverAsync(["w1"], 0, "connection reset", CancellationToken.None));
        Assert.Equal(Grpc.Core.StatusCode.Unavailable, ex.Status);
        Assert.Contains("w1", ex.Message);
        Assert.Contains("connection reset", ex.Message);
    }
}
