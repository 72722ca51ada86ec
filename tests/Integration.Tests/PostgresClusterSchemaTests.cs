using System.Net;
using Distributed.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using Orleans.Configuration;
using Orleans.Runtime.Membership;
using Orleans.Runtime.MembershipService;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// The project's own PostgreSQL schema (<see cref="PostgresClusterSchema"/>) against a real PostgreSQL: it applies once
/// and idempotently, also when several callers race on an empty database; it refuses what it must (no schema while
/// application is off, a newer schema, a user without DDL rights); and Orleans' own ADO.NET clustering provider,
/// driven directly, finds on it the membership contract it relies on (table version as ETag, atomic conditional
/// insert and update, heartbeats that leave the version alone, gateways, defunct-silo cleanup).
/// </summary>
[Trait("Category", "Integration")]
public sealed class PostgresClusterSchemaTests(ITestOutputHelper output)
{
    /// <summary>The grants docs/OPERATIONS.md gives a least-privilege worker user (role name substituted).</summary>
    private const string WorkerGrants = """
        GRANT SELECT ON orleansquery, distributed_schema TO app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON distributed_membership_version, distributed_membership, distributed_grain_state TO app;
        GRANT USAGE ON SEQUENCE distributed_grain_state_etag TO app;
        """;

    [PostgresFact]
    public async Task Schema_AppliedByConcurrentCallersThenAgain_AppliesOnceAndIsComplete()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("fresh");

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() => PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None))));
        output.WriteLine("concurrent: " + string.Join(", ", outcomes));
        Assert.Single(outcomes, o => o == ClusterSchemaOutcome.Applied);
        Assert.Equal(ClusterSchemaOutcome.UpToDate, await PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None));
        Assert.Equal(ClusterSchemaOutcome.UpToDate, await PostgresClusterSchema.EnsureAsync(db, apply: false, CancellationToken.None));

        // The printed script is idempotent by itself too, also when runs race on an empty database (psql by several operators).
        await pg.ExecuteAsync(PostgresClusterSchema.StandaloneScript, "fresh");
        await pg.CreateDatabaseAsync("printed");
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() => pg.ExecuteAsync(PostgresClusterSchema.StandaloneScript, "printed"))));
        Assert.Equal(ClusterSchemaOutcome.UpToDate, await PostgresClusterSchema.EnsureAsync(pg.ConnectionTo("printed"), apply: false, CancellationToken.None));
        await using var connection = new NpgsqlConnection(db);
        await connection.OpenAsync();
        Assert.Equal(PostgresClusterSchema.Version, await PostgresClusterSchema.ReadInstalledVersionAsync(connection, CancellationToken.None));
        var keys = await QueryAsync(connection, $"SELECT querykey FROM {PostgresClusterSchema.QueryTable} ORDER BY querykey", r => r.GetString(0));
        Assert.Equal(PostgresClusterSchema.QueryKeys.Order(StringComparer.Ordinal), keys);
        var tables = await QueryAsync(connection, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename", r => r.GetString(0));
        Assert.Equal(["distributed_grain_state", "distributed_membership", "distributed_membership_version", "distributed_schema", "orleansquery"], tables);
        Assert.Contains($"pg_advisory_xact_lock({PostgresClusterSchema.AdvisoryLockKey})", PostgresClusterSchema.Script, StringComparison.Ordinal);
    }

    [PostgresFact]
    public async Task Schema_MissingWithoutApplication_OrNewer_IsRefusedNamingTheTable()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("refusals");

        var missing = await Assert.ThrowsAsync<ClusterSchemaException>(() => PostgresClusterSchema.EnsureAsync(db, apply: false, CancellationToken.None));
        output.WriteLine(missing.Message);
        Assert.Contains("table distributed_schema is missing", missing.Message, StringComparison.Ordinal);
        Assert.Contains("--print-schema", missing.Message, StringComparison.Ordinal);

        Assert.Equal(ClusterSchemaOutcome.Applied, await PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None));
        int newer = PostgresClusterSchema.Version + 1;
        await pg.ExecuteAsync($"UPDATE distributed_schema SET version = {newer}", "refusals");
        var downgrade = await Assert.ThrowsAsync<ClusterSchemaException>(() => PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None));
        output.WriteLine(downgrade.Message);
        Assert.Contains($"schema version {newer}, newer than this build's version {PostgresClusterSchema.Version}", downgrade.Message, StringComparison.Ordinal);
        // The script refuses a downgrade on its own as well (psql path), changing nothing.
        var script = await Assert.ThrowsAsync<PostgresException>(() => pg.ExecuteAsync(PostgresClusterSchema.StandaloneScript, "refusals"));
        Assert.Contains("newer than this release", script.MessageText, StringComparison.Ordinal);
    }

    [PostgresFact]
    public async Task LeastPrivilegeUser_CannotApply_ButServesOnAnAppliedSchemaWithTheDocumentedGrants()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        await pg.CreateDatabaseAsync("shared");
        await pg.ExecuteAsync("CREATE ROLE app LOGIN");
        string app = pg.ConnectionTo("shared", "app");

        // PostgreSQL 15+ gives ordinary users no CREATE on the public schema: application fails, naming the remedy.
        var refused = await Assert.ThrowsAsync<ClusterSchemaException>(() => PostgresClusterSchema.EnsureAsync(app, apply: true, CancellationToken.None));
        output.WriteLine(refused.Message);
        Assert.Contains("may not create tables", refused.Message, StringComparison.Ordinal);

        Assert.Equal(ClusterSchemaOutcome.Applied, await PostgresClusterSchema.EnsureAsync(pg.ConnectionTo("shared"), apply: true, CancellationToken.None));
        await pg.ExecuteAsync(WorkerGrants, "shared");
        // With the schema in place the default (apply) needs no DDL, and the provider and the plan storage work as 'app'.
        Assert.Equal(ClusterSchemaOutcome.UpToDate, await PostgresClusterSchema.EnsureAsync(app, apply: true, CancellationToken.None));
        var table = ClusteringTable(app, "least-privilege");
        await table.InitializeMembershipTableAsync(true);
        Assert.True(await table.InsertRowAsync(Entry(1, SiloStatus.Active), (await table.ReadAllAsync()).Version.Next()));
        await PostgresGrainStorageTests.RoundTripAsync(app);
    }

    [PostgresFact]
    public async Task OrleansAdoNetProvider_OnTheProjectSchema_KeepsTheMembershipContract()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("contract");
        await PostgresClusterSchema.EnsureAsync(db, apply: true, CancellationToken.None);
        var table = ClusteringTable(db, "c1");
        var other = ClusteringTable(db, "c2");
        await table.InitializeMembershipTableAsync(true);
        await other.InitializeMembershipTableAsync(true);

        var empty = await table.ReadAllAsync();
        Assert.Empty(empty.Members);
        Assert.Equal(0, empty.Version.Version);

        // Insert: the version moves from the one read to the next, with the row.
        var a = Entry(1, SiloStatus.Joining);
        Assert.True(await table.InsertRowAsync(a, empty.Version.Next()));
        var afterInsert = await table.ReadAllAsync();
        Assert.Equal(1, afterInsert.Version.Version);
        AssertSame(a, Assert.Single(afterInsert.Members).Item1);
        // A stale version, or a silo already there, changes nothing.
        Assert.False(await table.InsertRowAsync(Entry(2, SiloStatus.Joining), empty.Version.Next()));
        Assert.False(await table.InsertRowAsync(a, afterInsert.Version.Next()));
        Assert.Equal(1, (await table.ReadAllAsync()).Version.Version);
        Assert.Single((await table.ReadAllAsync()).Members);

        // Racing writers that read the same version: exactly one wins.
        var read = await table.ReadAllAsync();
        var race = await Task.WhenAll(Enumerable.Range(10, 6).Select(i => Task.Run(() => table.InsertRowAsync(Entry(i, SiloStatus.Joining), read.Version.Next()))));
        Assert.Single(race, won => won);
        var afterRace = await table.ReadAllAsync();
        Assert.Equal(2, afterRace.Version.Version);
        Assert.Equal(2, afterRace.Members.Count);

        // Update: status and suspicions round-trip; a stale version or an unknown silo changes nothing.
        var (current, etag) = afterRace.Members.Single(m => m.Item1.SiloAddress.Equals(a.SiloAddress));
        current.Status = SiloStatus.Active;
        current.SuspectTimes = [Tuple.Create(Entry(10, SiloStatus.Active).SiloAddress, new DateTime(2026, 1, 2, 3, 4, 5, 678, DateTimeKind.Utc))];
        Assert.True(await table.UpdateRowAsync(current, etag, afterRace.Version.Next()));
        Assert.False(await table.UpdateRowAsync(current, etag, afterRace.Version.Next()));
        var afterUpdate = await table.ReadRowAsync(a.SiloAddress);
        Assert.Equal(3, afterUpdate.Version.Version);
        var updated = Assert.Single(afterUpdate.Members).Item1;
        Assert.Equal(SiloStatus.Active, updated.Status);
        Assert.Equal(current.SuspectTimes.Select(s => (s.Item1, s.Item2)), updated.SuspectTimes!.Select(s => (s.Item1, s.Item2)));
        Assert.False(await table.UpdateRowAsync(Entry(99, SiloStatus.Active), etag, afterUpdate.Version.Next()));
        Assert.Equal(3, (await table.ReadAllAsync()).Version.Version);
        // ReadRow of a silo that is not there still carries the version.
        var none = await table.ReadRowAsync(Entry(98, SiloStatus.Active).SiloAddress);
        Assert.Empty(none.Members);
        Assert.Equal(3, none.Version.Version);

        // Heartbeat: only IAmAliveTime changes, the version does not.
        var alive = new DateTime(2030, 5, 6, 7, 8, 9, DateTimeKind.Utc);
        updated.IAmAliveTime = alive;
        await table.UpdateIAmAliveAsync(updated);
        var afterAlive = await table.ReadRowAsync(a.SiloAddress);
        Assert.Equal(3, afterAlive.Version.Version);
        Assert.Equal(alive, Assert.Single(afterAlive.Members).Item1.IAmAliveTime);

        // Gateways: the Active silos of this cluster id only.
        var gateways = new AdoNetGatewayListProvider(NullLogger<AdoNetGatewayListProvider>.Instance, EmptyServices,
            Options.Create(new AdoNetClusteringClientOptions { Invariant = "Npgsql", ConnectionString = db }),
            Options.Create(new GatewayOptions()), Options.Create(new ClusterOptions { ClusterId = "c1", ServiceId = "s" }));
        await gateways.InitializeGatewayListProviderAsync();
        Assert.Equal([Gateway(a)], await gateways.GetGatewaysAsync());
        Assert.True(await other.InsertRowAsync(Entry(50, SiloStatus.Active), (await other.ReadAllAsync()).Version.Next()));
        Assert.Equal([Gateway(a)], await gateways.GetGatewaysAsync());

        // Defunct cleanup removes old Dead silos only, and leaves the version alone.
        var (joiner, joinerEtag) = (await table.ReadAllAsync()).Members.Single(m => m.Item1.Status == SiloStatus.Joining);
        joiner.Status = SiloStatus.Dead;
        var beforeCleanup = await table.ReadAllAsync();
        Assert.True(await table.UpdateRowAsync(joiner, joinerEtag, beforeCleanup.Version.Next()));
        await table.CleanupDefunctSiloEntriesAsync(DateTimeOffset.UtcNow.AddYears(10));
        var afterCleanup = await table.ReadAllAsync();
        Assert.Equal(beforeCleanup.Version.Version + 1, afterCleanup.Version.Version);
        Assert.Equal([a.SiloAddress], afterCleanup.Members.Select(m => m.Item1.SiloAddress));

        // Deleting a cluster id's entries leaves other cluster ids alone.
        await table.DeleteMembershipTableEntriesAsync("c1");
        await using var connection = new NpgsqlConnection(db);
        await connection.OpenAsync();
        Assert.Equal(["c2"], await QueryAsync(connection, "SELECT DISTINCT cluster_id FROM distributed_membership", r => r.GetString(0)));
        Assert.Single((await other.ReadAllAsync()).Members);
    }

    private static readonly IServiceProvider EmptyServices = new ServiceCollection().BuildServiceProvider();

    internal static AdoNetClusteringTable ClusteringTable(string connectionString, string clusterId) => new(EmptyServices,
        Options.Create(new ClusterOptions { ClusterId = clusterId, ServiceId = "s" }),
        Options.Create(new AdoNetClusteringSiloOptions { Invariant = "Npgsql", ConnectionString = connectionString }),
        NullLogger<AdoNetClusteringTable>.Instance);

    // PostgreSQL keeps microseconds; the entries' times are whole milliseconds so they round-trip exactly.
    private static MembershipEntry Entry(int i, SiloStatus status)
    {
        var now = DateTime.UtcNow;
        var time = new DateTime(now.Year, now.Month, now.Day, now.Hour, now.Minute, now.Second, now.Millisecond, DateTimeKind.Utc);
        return new MembershipEntry
        {
            SiloAddress = SiloAddress.New(new IPEndPoint(IPAddress.Loopback, 11000 + i), 1000 + i),
            Status = status,
            ProxyPort = 30000 + i,
            HostName = $"host-{i}",
            SiloName = $"silo-{i}",
            StartTime = time,
            IAmAliveTime = time,
        };
    }

    private static Uri Gateway(MembershipEntry e) => SiloAddress.New(new IPEndPoint(e.SiloAddress.Endpoint.Address, e.ProxyPort), e.SiloAddress.Generation).ToGatewayUri();

    private static void AssertSame(MembershipEntry expected, MembershipEntry actual)
    {
        Assert.Equal((expected.SiloAddress, expected.Status, expected.ProxyPort, expected.HostName, expected.SiloName, expected.StartTime, expected.IAmAliveTime),
            (actual.SiloAddress, actual.Status, actual.ProxyPort, actual.HostName, actual.SiloName, actual.StartTime, actual.IAmAliveTime));
        Assert.Null(actual.SuspectTimes);
    }

    internal static async Task<List<T>> QueryAsync<T>(NpgsqlConnection connection, string sql, Func<NpgsqlDataReader, T> read)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await using var reader = await command.ExecuteReaderAsync();
        var rows = new List<T>();
        while (await reader.ReadAsync())
        {
            rows.Add(read(reader));
        }
        return rows;
    }
}
