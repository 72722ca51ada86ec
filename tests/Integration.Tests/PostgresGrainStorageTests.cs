using Distributed.ExpertWorker.Grains;
using Distributed.Hosting;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Serialization;
using Orleans.Storage;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// <see cref="PostgresGrainStorage"/> (the placement plan's storage with AdoNet clustering) against a real PostgreSQL:
/// state round-trips; a write or clear from an activation whose ETag is stale is refused with
/// <see cref="InconsistentStateException"/> and changes nothing; of two first writes exactly one wins; an ETag from
/// before a clear never matches again.
/// </summary>
[Trait("Category", "Integration")]
public sealed class PostgresGrainStorageTests(ITestOutputHelper output)
{
    private static readonly GrainId Placement = GrainId.Create("placement", "0");

    [PostgresFact]
    public async Task TwoActivations_StaleETagWriteAndClear_AreRefusedAndChangeNothing()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("state");
        await PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None);
        await using var first = Storage(db);
        await using var second = Storage(db);

        // Both activations read the same (absent) state; the first one writes it.
        var a = await ReadAsync(first);
        var b = await ReadAsync(second);
        Assert.False(a.RecordExists);
        a.State!.LastVersion = 7;
        a.State!.OperationLog.Add(new PlacementOperation("op-1", PlanChangeKind.Initial, OperationState.Completed, 0, 1, "initial plan", null, 1, 1, 1, 2));
        await first.WriteStateAsync("placement", Placement, a);
        string written = a.ETag!;

        // The second, stale activation can neither create nor overwrite nor clear it.
        b.State!.LastVersion = 1;
        var create = await Assert.ThrowsAsync<InconsistentStateException>(() => second.WriteStateAsync("placement", Placement, b));
        output.WriteLine(create.Message);
        Assert.Equal(written, create.StoredEtag);
        await Assert.ThrowsAsync<InconsistentStateException>(() => second.ClearStateAsync("placement", Placement, b));
        b = await ReadAsync(second);
        Assert.Equal((7L, written), (b.State!.LastVersion, b.ETag));
        Assert.Equal("op-1", Assert.Single(b.State!.OperationLog).Id);

        // Now the second is current and the first is stale.
        b.State!.LastVersion = 8;
        await second.WriteStateAsync("placement", Placement, b);
        a.State!.LastVersion = 99;
        var overwrite = await Assert.ThrowsAsync<InconsistentStateException>(() => first.WriteStateAsync("placement", Placement, a));
        Assert.Equal(b.ETag, overwrite.StoredEtag);
        Assert.Equal(8L, (await ReadAsync(first)).State!.LastVersion);

        // After a clear, no ETag issued before it matches again (the sequence never reuses one).
        string beforeClear = b.ETag!;
        await second.ClearStateAsync("placement", Placement, b);
        Assert.Null(b.ETag);
        Assert.False((await ReadAsync(first)).RecordExists);
        await second.WriteStateAsync("placement", Placement, b);
        Assert.NotEqual(beforeClear, b.ETag);
        var stale = new GrainState<PlacementGrainState>(new PlacementGrainState()) { ETag = beforeClear, RecordExists = true };
        await Assert.ThrowsAsync<InconsistentStateException>(() => first.WriteStateAsync("placement", Placement, stale));
        // An ETag this storage never issued matches nothing.
        var forged = new GrainState<PlacementGrainState>(new PlacementGrainState()) { ETag = "not-a-number", RecordExists = true };
        await Assert.ThrowsAsync<InconsistentStateException>(() => first.WriteStateAsync("placement", Placement, forged));
    }

    [PostgresFact]
    public async Task ConcurrentFirstWrites_ExactlyOneWins()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("race");
        await PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None);
        var storages = Enumerable.Range(0, 6).Select(_ => Storage(db)).ToList();
        try
        {
            var results = await Task.WhenAll(storages.Select((s, i) => Task.Run(async () =>
            {
                var state = new GrainState<PlacementGrainState>(new PlacementGrainState { LastVersion = i });
                try
                {
                    await s.WriteStateAsync("placement", Placement, state);
                    return (long?)i;
                }
                catch (InconsistentStateException)
                {
                    return null;
                }
            })));
            long winner = Assert.Single(results, r => r is not null)!.Value;
            Assert.Equal(winner, (await ReadAsync(storages[0])).State!.LastVersion);
        }
        finally
        {
            foreach (var s in storages)
            {
                await s.DisposeAsync();
            }
        }
    }

    /// <summary>Write, read back, overwrite through <paramref name="connectionString"/> (used with a least-privilege user).</summary>
    internal static async Task RoundTripAsync(string connectionString)
    {
        await using var storage = Storage(connectionString);
        var state = await ReadAsync(storage);
        state.State!.LastVersion = 3;
        await storage.WriteStateAsync("placement", Placement, state);
        state.State!.LastVersion = 4;
        await storage.WriteStateAsync("placement", Placement, state);
        Assert.Equal(4L, (await ReadAsync(storage)).State!.LastVersion);
    }

    private static readonly Serializer Serializer = new ServiceCollection()
        .AddSerializer(b => b.AddAssembly(typeof(PlacementGrainState).Assembly).AddAssembly(typeof(PlacementOperation).Assembly))
        .BuildServiceProvider().GetRequiredService<Serializer>();

    private static PostgresGrainStorage Storage(string connectionString)
        => new(PlacementGrain.StorageName, connectionString, "test-service", new OrleansGrainStorageSerializer(Serializer));

    private static async Task<GrainState<PlacementGrainState>> ReadAsync(PostgresGrainStorage storage)
    {
        var state = new GrainState<PlacementGrainState>(new PlacementGrainState());
        await storage.ReadStateAsync("placement", Placement, state);
        return state;
    }
}
