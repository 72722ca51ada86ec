using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>A serve process whose routed experts run on 2 local worker processes (<c>--local-workers 2</c>).</summary>
public sealed class TwoWorkerServeFixture : ServeFixture
{
    protected override string[] ExtraArgs => ["--local-workers", "2"];
}

/// <summary>The same user-level scenarios as in-process, with experts on 2 workers: same golden tokens.</summary>
[Trait("Category", "Integration")]
public sealed class ServeTwoWorkersTests : IClassFixture<TwoWorkerServeFixture>
{
    private readonly TwoWorkerServeFixture _fixture;

    public ServeTwoWorkersTests(TwoWorkerServeFixture fixture, ITestOutputHelper output)
    {
        _fixture = fixture;
        fixture.Server.Output = output;
    }

    [Fact]
    public void StartsWorkers_ExpertsNotInProcess() =>
        Assert.Contains(_fixture.Server.Lines, l => l.Contains("experts on 2 local workers", StringComparison.Ordinal));

    [Fact]
    public Task Completion_TokenIdPrompts_GreedyTokensEqualGolden() => ServeScenarios.GoldenGreedyAsync(_fixture.Client);

    [Fact]
    public Task EightConcurrentClients_AllGetTheirGoldenTokens() => ServeScenarios.ConcurrentClientsAsync(_fixture.Client, 8);

    [Fact]
    public Task ClientDisconnectsMidStream_ServerKeepsServingOthers() => ServeScenarios.DisconnectMidStreamAsync(_fixture.Client, _fixture.Server);
}
