using System.Diagnostics;
using Npgsql;

namespace Distributed.Integration.Tests;

/// <summary>
/// A throwaway PostgreSQL server on a loopback port: a fresh cluster (<c>initdb</c>, trust authentication, no fsync) in
/// a temporary folder, run as the <c>postgres</c> user when the tests run as root (PostgreSQL refuses root), killed and
/// deleted on dispose.
/// </summary>
internal sealed class PostgresServer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _directory;

    private PostgresServer(Process process, string directory, int port)
    {
        _process = process;
        _directory = directory;
        Port = port;
    }

    /// <summary>The folder holding initdb and postgres, or null.</summary>
    public static string? BinDirectory { get; } = FindBin();

    /// <summary>Why PostgreSQL tests cannot run here, or null when they can.</summary>
    public static string? Missing => BinDirectory is null
        ? "PostgreSQL server binaries are not installed (apt-get install postgresql)"
        : Environment.UserName == "root" && !File.Exists("/usr/sbin/runuser") && !File.Exists("/sbin/runuser")
            ? "running as root without runuser: PostgreSQL refuses to run as root"
            : null;

    /// <summary>The loopback port it listens on.</summary>
    public int Port { get; }

    /// <summary>Npgsql connection string for the <c>postgres</c> database.</summary>
    public string Connection => $"Host=127.0.0.1;Port={Port};Username=postgres;Database=postgres;Timeout=5";

    /// <summary>Npgsql connection string for <paramref name="database"/> as <paramref name="user"/> (trust authentication: no password).</summary>
    public string ConnectionTo(string database, string user = "postgres") => $"Host=127.0.0.1;Port={Port};Username={user};Database={database};Timeout=5";

    /// <summary>Runs <paramref name="sql"/> (no parameters) on <paramref name="database"/> as the superuser.</summary>
    public async Task ExecuteAsync(string sql, string database = "postgres")
    {
        await using var connection = new NpgsqlConnection(ConnectionTo(database));
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    /// <summary>Creates an empty database and returns its connection string (superuser).</summary>
    public async Task<string> CreateDatabaseAsync(string name)
    {
        await ExecuteAsync($"CREATE DATABASE {name}");
        return ConnectionTo(name);
    }

    public static async Task<PostgresServer> StartAsync(Action<string> log)
    {
        string bin = BinDirectory ?? throw new InvalidOperationException(Missing);
        string dir = Path.Combine(Path.GetTempPath(), $"distributed-pg-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        bool root = Environment.UserName == "root";
        if (root)
        {
            await RunAsync("chown", ["postgres:", dir], log);
        }
        int port = Coordinator.Distribution.WorkerProcess.FreePorts(1)[0];
        await RunAsync(Path.Combine(bin, "initdb"), ["-D", Path.Combine(dir, "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"], log, root);
        var psi = Command(Path.Combine(bin, "postgres"),
            ["-D", Path.Combine(dir, "data"), "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-k", dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], root);
        var process = Process.Start(psi) ?? throw new InvalidOperationException("could not start postgres");
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void Forward(object? sender, DataReceivedEventArgs e)
        {
            if (e.Data is not null)
            {
                log($"[postgres] {e.Data}");
                // The postmaster's own line once it listens (after recovery/startup of a fresh cluster).
                if (e.Data.Contains("database system is ready to accept connections", StringComparison.Ordinal))
                {
                    ready.TrySetResult();
                }
            }
        }
        process.OutputDataReceived += Forward;
        process.ErrorDataReceived += Forward;
        process.EnableRaisingEvents = true;
        process.Exited += (_, _) => ready.TrySetException(new InvalidOperationException($"postgres exited before it was ready (exit code {process.ExitCode})"));
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var server = new PostgresServer(process, dir, port);
        try
        {
            await ready.Task.WaitAsync(TimeSpan.FromSeconds(30));
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await TestProcesses.KillAndDisposeAsync(_process);
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // A file still held by an exiting process: the temp folder is cleaned by the system.
        }
    }

    private static ProcessStartInfo Command(string file, IEnumerable<string> args, bool asPostgres = false)
    {
        var psi = new ProcessStartInfo(asPostgres ? "runuser" : file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (asPostgres)
        {
            foreach (var a in new[] { "-u", "postgres", "--", file })
            {
                psi.ArgumentList.Add(a);
            }
        }
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        return psi;
    }

    private static async Task RunAsync(string file, IEnumerable<string> args, Action<string> log, bool asPostgres = false)
    {
        using var p = Process.Start(Command(file, args, asPostgres)) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
        {
            log(await stdout);
            throw new InvalidOperationException($"{file} exited with {p.ExitCode}: {stderr}");
        }
    }

    private static string? FindBin()
    {
        const string Root = "/usr/lib/postgresql";
        if (!Directory.Exists(Root))
        {
            return null;
        }
        return Directory.GetDirectories(Root)
            .Select(d => Path.Combine(d, "bin"))
            .Where(b => File.Exists(Path.Combine(b, "initdb")) && File.Exists(Path.Combine(b, "postgres")))
            .OrderByDescending(b => b, StringComparer.Ordinal)
            .FirstOrDefault();
    }
}

/// <summary>A fact that needs the PostgreSQL server binaries (see <see cref="ToolFactAttribute"/>).</summary>
internal sealed class PostgresFactAttribute() : ToolFactAttribute(PostgresServer.Missing);
