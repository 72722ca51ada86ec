using System.Text.RegularExpressions;

namespace Distributed.Hosting.Tests;

/// <summary>
/// The embedded PostgreSQL script (<see cref="PostgresClusterSchema"/>) checked without a database: one version
/// throughout, every query key the provider needs, each query using only the parameters the provider binds for it
/// (Microsoft.Orleans.Clustering.AdoNet 10.4.2, RelationalOrleansQueries), and none of Orleans' own schema objects.
/// The same script runs against a real PostgreSQL in Integration.Tests (PostgresClusterSchemaTests).
/// </summary>
[Trait("Category", "Unit")]
public sealed partial class PostgresClusterSchemaScriptTests
{
    // The parameters the provider binds per query (DbStoredQueries.Columns; SiloAddress binds Address, Port, Generation).
    private static readonly Dictionary<string, string[]> Parameters = new()
    {
        ["GatewaysQueryKey"] = ["DeploymentId", "Status"],
        ["MembershipReadAllKey"] = ["DeploymentId"],
        ["MembershipReadRowKey"] = ["DeploymentId", "Address", "Port", "Generation"],
        ["InsertMembershipVersionKey"] = ["DeploymentId"],
        ["UpdateIAmAlivetimeKey"] = ["DeploymentId", "Address", "Port", "Generation", "IAmAliveTime"],
        ["InsertMembershipKey"] = ["DeploymentId", "IAmAliveTime", "SiloName", "HostName", "Address", "Port", "Generation", "StartTime", "Status", "ProxyPort", "Version"],
        ["UpdateMembershipKey"] = ["DeploymentId", "Address", "Port", "Generation", "IAmAliveTime", "Status", "SuspectTimes", "Version"],
        ["DeleteMembershipTableEntriesKey"] = ["DeploymentId"],
        ["CleanupDefunctSiloEntriesKey"] = ["DeploymentId", "IAmAliveTime"],
        ["CleanupDefunctSiloEntryKey"] = ["DeploymentId", "Address", "Port", "Generation", "SuspectTimes", "StartTime", "IAmAliveTime"],
    };

    [Fact]
    public void Script_HasOneVersionEveryQueryKeyAndOnlyTheProvidersParameters()
    {
        string script = PostgresClusterSchema.Script;
        Assert.Equal(1, PostgresClusterSchema.Version);
        Assert.Equal(PostgresClusterSchema.Version.ToString(System.Globalization.CultureInfo.InvariantCulture),
            Assert.Single(RecordedVersion().Matches(script)).Groups[1].Value);
        Assert.Equal(PostgresClusterSchema.Version.ToString(System.Globalization.CultureInfo.InvariantCulture),
            Assert.Single(GuardVersion().Matches(script)).Groups[1].Value);
        Assert.Contains($"pg_advisory_xact_lock({PostgresClusterSchema.AdvisoryLockKey})", script, StringComparison.Ordinal);

        var queries = Query().Matches(script).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);
        Assert.Equal(Parameters.Keys.Order(StringComparer.Ordinal), queries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(Parameters.Keys.Order(StringComparer.Ordinal), PostgresClusterSchema.QueryKeys.Order(StringComparer.Ordinal));
        foreach (var (key, text) in queries)
        {
            var used = Parameter().Matches(text).Select(m => m.Groups[1].Value).ToHashSet(StringComparer.Ordinal);
            Assert.True(used.IsSubsetOf(Parameters[key]), $"{key} uses {string.Join(", ", used.Except(Parameters[key]))}, which the provider does not bind");
            Assert.Contains("DeploymentId", used);
        }
    }

    [Fact]
    public void Script_IsTheProjectsOwn_AndThePrintedFormIsOneTransaction()
    {
        foreach (string orleansObject in new[] { "OrleansMembershipTable", "OrleansMembershipVersionTable", "insert_membership", "update_membership" })
        {
            Assert.DoesNotContain(orleansObject, PostgresClusterSchema.Script, StringComparison.OrdinalIgnoreCase);
        }
        Assert.StartsWith("BEGIN;\n", PostgresClusterSchema.StandaloneScript, StringComparison.Ordinal);
        Assert.EndsWith("\nCOMMIT;\n", PostgresClusterSchema.StandaloneScript, StringComparison.Ordinal);
        // The body has no transaction control of its own: the worker runs it inside its transaction.
        Assert.DoesNotMatch(TransactionControl(), PostgresClusterSchema.Script);
    }

    [GeneratedRegex(@"VALUES \('expert-cluster', (\d+)\)")]
    private static partial Regex RecordedVersion();

    [GeneratedRegex(@"IF installed > (\d+) THEN")]
    private static partial Regex GuardVersion();

    [GeneratedRegex(@"\('(\w+Key)', \$q\$(.*?)\$q\$\)", RegexOptions.Singleline)]
    private static partial Regex Query();

    [GeneratedRegex(@"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", RegexOptions.Multiline | RegexOptions.IgnoreCase)]
    private static partial Regex TransactionControl();

    [GeneratedRegex(@"@(\w+)")]
    private static partial Regex Parameter();
}
