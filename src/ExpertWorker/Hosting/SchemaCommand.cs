using Distributed.Hosting;
using Npgsql;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// The worker's schema commands for <see cref="ClusteringMode.AdoNet"/> clustering, for operators who keep DDL out of
/// the workers: <c>--print-schema</c> writes the project's PostgreSQL script (<see cref="PostgresClusterSchema.StandaloneScript"/>)
/// to standard output, <c>--apply-schema</c> applies it through <c>Cluster:AdoNetConnectionString</c> and exits.
/// </summary>
public static class SchemaCommand
{
    /// <summary>Flag that prints the schema script and exits 0.</summary>
    public const string PrintFlag = "--print-schema";

    /// <summary>Flag that applies the schema (when missing or older) and exits: 0 done, 2 bad configuration, 4 the database refused.</summary>
    public const string ApplyFlag = "--apply-schema";

    /// <summary>Writes the script, ready for <c>psql -v ON_ERROR_STOP=1 -f -</c>.</summary>
    public static int Print(TextWriter stdout)
    {
        ArgumentNullException.ThrowIfNull(stdout);
        stdout.Write(PostgresClusterSchema.StandaloneScript);
        return 0;
    }

    /// <summary>Applies the schema to the database named by <c>Cluster:AdoNetConnectionString</c>.</summary>
    public static async Task<int> ApplyAsync(IConfiguration configuration, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        string? connection = configuration[$"{ExpertClusterOptions.SectionName}:{nameof(ExpertClusterOptions.AdoNetConnectionString)}"];
        if (string.IsNullOrWhiteSpace(connection))
        {
            stderr.WriteLine($"expert worker: {ApplyFlag} needs Cluster:AdoNetConnectionString (the PostgreSQL database to migrate)");
            return 2;
        }
        try
        {
            var outcome = await PostgresClusterSchema.EnsureAsync(connection, apply: true, cancellationToken);
            stdout.WriteLine($"{PostgresClusterSchema.Component} schema version {PostgresClusterSchema.Version} "
                + (outcome == ClusterSchemaOutcome.Applied ? "applied" : "already in place"));
            return 0;
        }
        catch (ArgumentException ex)
        {
            // Npgsql rejects a malformed connection string before connecting; the message names the keyword, never the secret.
            stderr.WriteLine($"expert worker: Cluster:AdoNetConnectionString is not a valid connection string: {ex.Message}");
            return 2;
        }
        catch (Exception ex) when (ex is ClusterSchemaException or NpgsqlException or TimeoutException)
        {
            stderr.WriteLine($"expert worker: {ex.Message}");
            return 4;
        }
    }
}
