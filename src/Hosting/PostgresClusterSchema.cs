using System.Globalization;
using System.Reflection;
using System.Text.RegularExpressions;
using Npgsql;

namespace Distributed.Hosting;

/// <summary>What <see cref="PostgresClusterSchema.EnsureAsync"/> found or did.</summary>
public enum ClusterSchemaOutcome
{
    /// <summary>The database already held <see cref="PostgresClusterSchema.Version"/>; nothing was changed (no DDL ran).</summary>
    UpToDate = 0,
    /// <summary>The script ran (the database was empty or held an older version) and the database now holds this version.</summary>
    Applied = 1,
}

/// <summary>The database cannot serve the expert cluster: the schema is missing, older or newer, or could not be applied.</summary>
public sealed class ClusterSchemaException(string message) : Exception(message);

/// <summary>
/// The project's own PostgreSQL schema for <see cref="ClusteringMode.AdoNet"/> (embedded
/// <c>Schema/postgresql-cluster.sql</c>): the named queries Orleans' ADO.NET clustering provider loads from the
/// <c>orleansquery</c> table, the membership tables they use, and the grain-state table that keeps the placement plan
/// and its operation log. Workers apply it at start-up (<see cref="ExpertClusterOptions.AdoNetApplySchema"/>) or only
/// check it; operators can print it (<c>--print-schema</c>) and apply it themselves.
/// </summary>
public static partial class PostgresClusterSchema
{
    /// <summary>Value of <c>distributed_schema.component</c> for this schema.</summary>
    public const string Component = "expert-cluster";

    /// <summary>Table recording which schema version the database holds.</summary>
    public const string SchemaTable = "distributed_schema";

    /// <summary>Table of named queries; the provider's name for it is fixed (<c>OrleansQuery</c>, folded to lower case).</summary>
    public const string QueryTable = "orleansquery";

    /// <summary>Grain state table (<c>service_id, storage_name, state_name, grain_id</c> → <c>etag, payload</c>).</summary>
    public const string GrainStateTable = "distributed_grain_state";

    /// <summary>Sequence issuing grain-state ETags (never reused, even after a clear).</summary>
    public const string GrainStateETagSequence = "distributed_grain_state_etag";

    /// <summary>Transaction-scoped advisory lock the script takes first (<c>pg_advisory_xact_lock</c>), so runs never overlap.</summary>
    public const long AdvisoryLockKey = 5570747539801720881;

    /// <summary>The query keys Microsoft.Orleans.Clustering.AdoNet 10.4.2 reads (the last one is optional for it).</summary>
    public static IReadOnlyList<string> QueryKeys { get; } =
    [
        "GatewaysQueryKey", "MembershipReadAllKey", "MembershipReadRowKey", "InsertMembershipVersionKey", "UpdateIAmAlivetimeKey",
        "InsertMembershipKey", "UpdateMembershipKey", "DeleteMembershipTableEntriesKey", "CleanupDefunctSiloEntriesKey",
        "CleanupDefunctSiloEntryKey",
    ];

    /// <summary>The script's statements, to run inside one transaction (they take the advisory lock themselves).</summary>
    public static string Script { get; } = LoadScript();

    /// <summary>The schema version this build writes and expects (the script's <c>schema-version:</c> header).</summary>
    public static int Version { get; } = int.Parse(VersionHeader().Match(Script) is { Success: true } m
        ? m.Groups[1].Value
        : throw new InvalidOperationException("postgresql-cluster.sql has no 'schema-version:' header"), CultureInfo.InvariantCulture);

    /// <summary><see cref="Script"/> wrapped in <c>BEGIN</c>/<c>COMMIT</c>, ready for <c>psql -v ON_ERROR_STOP=1 -f</c>.</summary>
    public static string StandaloneScript => "BEGIN;\n\n" + Script.TrimEnd() + "\n\nCOMMIT;\n";

    /// <summary>
    /// Makes sure the database behind <paramref name="connectionString"/> holds this build's schema. Reads
    /// <c>distributed_schema</c> first: when it already holds <see cref="Version"/> nothing else runs (so a user without
    /// DDL rights can start once the schema is in place). Otherwise, with <paramref name="apply"/>, waits for the script's
    /// advisory lock, reads the version again (a concurrent caller may just have applied it: then
    /// <see cref="ClusterSchemaOutcome.UpToDate"/>) and runs the script in one transaction.
    /// </summary>
    /// <exception cref="ClusterSchemaException">The schema is missing or older and <paramref name="apply"/> is false;
    /// the database holds a newer version; or the script failed (e.g. the user may not create tables). The message names
    /// the table, both versions and the remedy.</exception>
    /// <exception cref="NpgsqlException">The database cannot be reached.</exception>
    public static async Task<ClusterSchemaOutcome> EnsureAsync(string connectionString, bool apply, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(connectionString);
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
        int? installed;
        try
        {
            installed = await ReadInstalledVersionAsync(connection, cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex)
        {
            throw new ClusterSchemaException($"reading table {SchemaTable} failed ({ex.SqlState}: {ex.MessageText})");
        }
        if (installed == Version)
        {
            return ClusterSchemaOutcome.UpToDate;
        }
        if (installed > Version)
        {
            throw new ClusterSchemaException(
                $"table {SchemaTable} holds {Component} schema version {installed}, newer than this build's version {Version}: run a release that knows version {installed}");
        }
        if (!apply)
        {
            throw new ClusterSchemaException(installed is null
                ? $"the database has no {Component} schema (table {SchemaTable} is missing) and Cluster:AdoNetApplySchema is false: "
                  + "apply the output of 'Distributed.ExpertWorker --print-schema' (or run 'Distributed.ExpertWorker --apply-schema') as a user allowed to create tables, or set Cluster:AdoNetApplySchema=true"
                : $"table {SchemaTable} holds {Component} schema version {installed}, older than this build's version {Version}, and Cluster:AdoNetApplySchema is false: "
                  + "apply the output of 'Distributed.ExpertWorker --print-schema' as a user allowed to alter tables, or set Cluster:AdoNetApplySchema=true");
        }
        try
        {
            // A session-level hold of the script's lock, taken outside any transaction: each statement after it starts a
            // new transaction, which sees every commit made before the lock was granted, catalog included (a backend
            // that waited inside a transaction could still hold a stale "no such table" from before its wait).
            await ExecuteAsync(connection, $"SELECT pg_advisory_lock({AdvisoryLockKey})", cancellationToken).ConfigureAwait(false);
            try
            {
                // Whoever held the lock before us may have applied this very version: then there is nothing left to do.
                if (await ReadInstalledVersionAsync(connection, cancellationToken).ConfigureAwait(false) == Version)
                {
                    return ClusterSchemaOutcome.UpToDate;
                }
                await using var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
                await ExecuteAsync(connection, Script, cancellationToken).ConfigureAwait(false);
                await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                // Closing the connection would release it as well; this returns a clean connection to the pool.
                await ExecuteAsync(connection, $"SELECT pg_advisory_unlock({AdvisoryLockKey})", CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (PostgresException ex)
        {
            throw new ClusterSchemaException(
                $"applying the {Component} schema version {Version} failed ({ex.SqlState}: {ex.MessageText}); "
                + (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege
                    ? "this user may not create tables: apply 'Distributed.ExpertWorker --print-schema' as the database owner, then run the workers with Cluster:AdoNetApplySchema=false or keep it true (an applied schema needs no DDL)"
                    : "nothing was changed (the script runs in one transaction)"));
        }
        return ClusterSchemaOutcome.Applied;
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The schema version recorded in <c>distributed_schema</c>, or null when the table or the row is missing.</summary>
    public static async Task<int?> ReadInstalledVersionAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(connection);
        // to_regclass resolves through search_path like the script's unqualified names, and needs no privilege.
        await using (var exists = new NpgsqlCommand($"SELECT to_regclass('{SchemaTable}') IS NOT NULL", connection))
        {
            if (!(bool)(await exists.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!)
            {
                return null;
            }
        }
        await using var read = new NpgsqlCommand($"SELECT version FROM {SchemaTable} WHERE component = @component", connection);
        read.Parameters.AddWithValue("component", Component);
        return await read.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is int version ? version : null;
    }

    private static string LoadScript()
    {
        const string Name = "Distributed.Hosting.Schema.postgresql-cluster.sql";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(Name)
            ?? throw new InvalidOperationException($"embedded resource {Name} is missing");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().ReplaceLineEndings("\n");
    }

    [GeneratedRegex(@"^-- schema-version: (\d+)$", RegexOptions.Multiline)]
    private static partial Regex VersionHeader();
}
