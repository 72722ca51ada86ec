using System.Collections.Concurrent;
using System.Globalization;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Distributed.Hosting;
using Npgsql;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// ADO.NET membership on the project's own PostgreSQL schema, as independent processes against a real PostgreSQL
/// started here: workers started together on an empty database apply the schema exactly once and join through it, a
/// coordinator (<c>infer --clustering AdoNet</c>) finds them through it and prints exactly the in-process JSON (fp32
/// wire), and the placement plan lives in the database. With schema application off, a database without the schema
/// stops the worker with exit code 4 and a line naming the table.
/// </summary>
[Trait("Category", "Integration")]
public sealed class PostgresMembershipTests(ITestOutputHelper output)
{
    private static readonly string[] Infer =
        ["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "500,17,300,42", "--max-new-tokens", "6", "--json", "--threads", "1"];

    [PostgresFact]
    public async Task TwoWorkersStartingTogetherOnAnEmptyDatabase_ApplyTheSchemaOnce_AndTheCoordinatorServesTheInProcessResult()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("cluster");
        string clusterId = $"pg-{Guid.NewGuid():N}";
        int[] ports = WorkerProcess.FreePorts(4);
        var lines = new ConcurrentQueue<string>();
        var workers = new List<WorkerProcess>();
        try
        {
            for (int i = 0; i < 2; i++)
            {
                workers.Add(WorkerProcess.Start(WorkerProcess.LocateWorker(),
                    ["--model", TestPaths.Fixture("tiny-maverick"), "--worker-id", $"p{i}", "--threads", "1", "--clustering", "AdoNet",
                     "--Cluster:AdoNetConnectionString", db, "--cluster-id", clusterId,
                     "--silo-port", ports[2 * i].ToString(CultureInfo.InvariantCulture), "--gateway-port", ports[2 * i + 1].ToString(CultureInfo.InvariantCulture),
                     "--Placement:SettleDelay", "00:00:00.2"],
                    $"p{i}", line =>
                    {
                        lines.Enqueue(line);
                        log.Write(line);
                    }));
            }
            foreach (var w in workers)
            {
                await w.WaitReadyAsync(TimeSpan.FromSeconds(90), CancellationToken.None);
            }
            string schemaLine = $"PostgreSQL {PostgresClusterSchema.Component} schema version {PostgresClusterSchema.Version}";
            Assert.Single(lines, l => l.Contains(schemaLine + " applied", StringComparison.Ordinal));
            Assert.Single(lines, l => l.Contains(schemaLine + " already in place", StringComparison.Ordinal));

            string inProcess = await RunAsync();
            string distributed = await RunAsync("--clustering", "AdoNet", "--Cluster:AdoNetConnectionString", db, "--cluster-id", clusterId, "--wire", "fp32");
            Assert.Equal(inProcess, distributed);

            // Both silos are Active in the project's membership table, and the plan is a row of its grain-state table.
            await using var connection = new NpgsqlConnection(db);
            await connection.OpenAsync();
            var silos = await PostgresClusterSchemaTests.QueryAsync(connection,
                $"SELECT port FROM distributed_membership WHERE cluster_id = '{clusterId}' AND status = 3 ORDER BY port", r => r.GetInt32(0));
            Assert.Equal(new[] { ports[0], ports[2] }.Order(), silos);
            var plan = await PostgresClusterSchemaTests.QueryAsync(connection,
                $"SELECT storage_name, length(payload) FROM {PostgresClusterSchema.GrainStateTable}", r => (r.GetString(0), r.GetInt32(1)));
            output.WriteLine($"grain state rows: {string.Join(", ", plan)}");
            Assert.Contains(plan, p => p.Item1 == "placement" && p.Item2 > 0);
        }
        finally
        {
            foreach (var w in workers)
            {
                await w.DisposeAsync();
            }
        }
    }

    [PostgresFact]
    public async Task SchemaApplicationOff_OnAnEmptyDatabase_WorkerExits4NamingTheTable()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        int[] ports = WorkerProcess.FreePorts(2);
        var lines = new ConcurrentQueue<string>();
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--threads", "1", "--worker-id", "pg", "--clustering", "AdoNet",
             "--Cluster:AdoNetConnectionString", pg.Connection, "--Cluster:AdoNetApplySchema", "false", "--cluster-id", $"pg-{Guid.NewGuid():N}",
             "--silo-port", ports[0].ToString(CultureInfo.InvariantCulture), "--gateway-port", ports[1].ToString(CultureInfo.InvariantCulture)],
            "pg", line =>
            {
                lines.Enqueue(line);
                log.Write(line);
            });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        await worker.WaitForExitAsync(timeout.Token);
        Assert.Equal(4, worker.ExitCode);
        Assert.Contains(lines, l => l.Contains("expert worker: the Orleans silo did not start (AdoNet membership", StringComparison.Ordinal)
            && l.Contains($"table {PostgresClusterSchema.SchemaTable} is missing", StringComparison.Ordinal)
            && l.Contains("--print-schema", StringComparison.Ordinal));
        // Nothing was created.
        await using var connection = new NpgsqlConnection(pg.Connection);
        await connection.OpenAsync();
        Assert.Null(await PostgresClusterSchema.ReadInstalledVersionAsync(connection, CancellationToken.None));
    }

    [PostgresFact]
    public async Task SchemaCommands_PrintTheScript_AndApplyItIdempotently()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var pg = await PostgresServer.StartAsync(log.Write);
        string db = await pg.CreateDatabaseAsync("operator");

        var (printed, printedLines, _) = await RunWorkerAsync(log, "--print-schema");
        Assert.Equal(0, printed);
        Assert.Equal(PostgresClusterSchema.StandaloneScript.TrimEnd('\n').Split('\n'), printedLines);
        var (noConnection, _, why) = await RunWorkerAsync(log, "--apply-schema");
        Assert.Equal(2, noConnection);
        Assert.Contains("--apply-schema needs Cluster:AdoNetConnectionString", why, StringComparison.Ordinal);
        string done = $"{PostgresClusterSchema.Component} schema version {PostgresClusterSchema.Version}";
        var (applied, appliedLines, _) = await RunWorkerAsync(log, "--apply-schema", "--Cluster:AdoNetConnectionString", db);
        Assert.Equal((0, done + " applied"), (applied, Assert.Single(appliedLines)));
        var (again, againLines, _) = await RunWorkerAsync(log, "--apply-schema", "--Cluster:AdoNetConnectionString", db);
        Assert.Equal((0, done + " already in place"), (again, Assert.Single(againLines)));
    }

    // Runs the worker executable to completion: its exit code, standard output lines and standard error.
    private static async Task<(int ExitCode, string[] Lines, string Errors)> RunWorkerAsync(TestLog log, params string[] args)
    {
        string worker = WorkerProcess.LocateWorker();
        var psi = new System.Diagnostics.ProcessStartInfo(worker.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) ? "dotnet" : worker)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (psi.FileName == "dotnet")
        {
            psi.ArgumentList.Add(worker);
        }
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        var process = System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException("could not start the worker");
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var stdout = process.StandardOutput.ReadToEndAsync(timeout.Token);
            string stderr = await process.StandardError.ReadToEndAsync(timeout.Token);
            await process.WaitForExitAsync(timeout.Token);
            log.Write($"[schema {string.Join(' ', args.Where(a => !a.Contains("Host=", StringComparison.Ordinal)))}] exit {process.ExitCode} {stderr}");
            return (process.ExitCode, (await stdout).TrimEnd('\n').Split('\n'), stderr);
        }
        finally
        {
            await TestProcesses.KillAndDisposeAsync(process);
        }
    }

    private async Task<string> RunAsync(params string[] extra)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync([.. Infer, .. extra], stdout, stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, rc);
        return stdout.ToString();
    }
}
