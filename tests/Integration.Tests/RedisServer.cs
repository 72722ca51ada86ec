using System.Diagnostics;
using System.Net.Sockets;
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

    public static async Task<RedisServer> StartAsync()
    {
        int port = WorkerProcess.FreePorts(1)[0];
        var process = Process.Start(new ProcessStartInfo(Executable ?? throw new InvalidOperationException(Missing),
            ["--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        {
            RedirectStandardOutput = true,
            UseShellExecute = false,
        })!;
        var server = new RedisServer(process, port);
        try
        {
            for (int i = 0; ; i++)
            {
                try
                {
                    using var client = new TcpClient();
                    await client.ConnectAsync("127.0.0.1", port);
                    return server;
                }
                catch (SocketException) when (i < 100)
                {
                    await Task.Delay(50);
                }
            }
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
