using System.Diagnostics;
using Distributed.Coordinator.Distribution;

namespace Distributed.Integration.Tests;

/// <summary>
/// A throwaway <c>redis-server</c> on a free loopback port (no persistence), killed on dispose; what the Redis
/// membership tests run against.
/// </summary>
internal sealed class RedisServer : IAsyncDisposable
{
    private readonly Process _process;

    private RedisServer(Process process, int port)
    {
        _process = process;
        Port = port;
    }

    /// <summary>The installed redis-server, or null.</summary>
    public static string? Executable { get; } = new[] { "/usr/bin/redis-server", "/usr/local/bin/redis-server" }.FirstOrDefault(File.Exists);

    /// <summary>Why Redis tests cannot run here, or null when they can.</summary>
    public static string? Missing => Executable is null ? "redis-server is not installed (apt-get install redis-server)" : null;

    /// <summary>The loopback port it listens on.</summary>
    public int Port { get; }

    /// <summary>StackExchange.Redis connection string.</summary>
    public string Connection => $"127.0.0.1:{Port}";

    /// <summary>
    /// Starts redis-server and returns once it logged that it accepts connections (its output is streamed to
    /// <paramref name="log"/>); fails at once when it exits first, or after 30 s.
    /// </summary>
    public static async Task<RedisServer> StartAsync(Action<string>? log = null)
    {
        int port = WorkerProcess.FreePorts(1)[0];
        var process = new Process
        {
            StartInfo = new ProcessStartInfo(Executable ?? throw new InvalidOperationException(Missing),
                ["--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            },
            EnableRaisingEvents = true,
        };
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void Forward(object? sender, DataReceivedEventArgs e)
        {
            if (e.Data is null)
            {
                return;
            }
            log?.Invoke($"[redis] {e.Data}");
            if (e.Data.Contains("Ready to accept connections", StringComparison.Ordinal))
            {
                ready.TrySetResult();
            }
        }
        process.OutputDataReceived += Forward;
        process.ErrorDataReceived += Forward;
        process.Exited += (_, _) => ready.TrySetException(new InvalidOperationException($"redis-server exited before it was ready (exit code {process.ExitCode})"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var server = new RedisServer(process, port);
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
    }
}

/// <summary>A fact that needs redis-server (see <see cref="ToolFactAttribute"/>).</summary>
internal sealed class RedisFactAttribute() : ToolFactAttribute(RedisServer.Missing);
