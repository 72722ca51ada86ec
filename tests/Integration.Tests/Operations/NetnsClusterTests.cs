using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Operations;

/// <summary>
/// Multi-host for real: <c>infra/netns-cluster.sh</c> builds four network namespaces (coordinator + the cluster's store,
/// three worker hosts) on a private test subnet with mutual TLS on every link; the coordinator joins the cluster through
/// Redis, or PostgreSQL (no worker list). One generation across the hosts equals the in-process run (fp32 wire: byte-identical JSON); serve
/// answers a client on another host with the same tokens, and keeps them while a worker joins, another is SIGKILLed
/// with completions in flight, the joined one is drained and stopped, and serve itself restarts (same plan version).
/// Skips, naming the reason, where the machine cannot make namespaces (not root, no iproute2, no redis-server, no openssl).
/// </summary>
[Trait("Category", "Integration")]
public sealed class NetnsClusterTests(ITestOutputHelper output)
{
    [NetnsFact]
    public Task FourHosts_RedisClusterWithTls_JoinKillDrainRestartKeepTheGoldenTokens() => FourHostsAsync("redis");

    /// <summary>The same on PostgreSQL: the project's own schema (applied by the first worker), membership and the placement
    /// authority's plan and operation log in it.</summary>
    [NetnsFact]
    public Task FourHosts_PostgresClusterWithTls_JoinKillDrainRestartKeepTheGoldenTokens()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        return FourHostsAsync("postgres");
    }

    private async Task FourHostsAsync(string store)
    {
        ToolFactAttribute.Require(Missing);
        var golden = Golden.Load("tiny-maverick").Prompts[0];
        string prompt = string.Join(",", golden.InputIds);
        var (exitCode, stdout, stderr) = await RunScriptAsync(
            ["--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", prompt, "--max-new-tokens", golden.NewTokens.Length.ToString(System.Globalization.CultureInfo.InvariantCulture),
             "--store", store],
            TimeSpan.FromMinutes(8));
        Assert.True(exitCode == 0, $"netns-cluster.sh exited {exitCode}; stderr tail:\n{Tail(stderr)}");
        string okLine = stdout.Split('\n').Single(l => l.StartsWith("NETNS_CLUSTER_OK ", StringComparison.Ordinal));
        Assert.Contains($"\"new_tokens\":[{string.Join(",", golden.NewTokens)}]", okLine, StringComparison.Ordinal);
        Assert.Contains("MATCH: distributed (2 hosts, fp32 wire, TLS) == in-process", stderr, StringComparison.Ordinal);
        Assert.Contains(" served=yes ", okLine, StringComparison.Ordinal);
        foreach (string step in new[] { "JOIN: worker c", "KILL: worker b SIGKILLed with 4 completions in flight", "DRAIN: worker c drained", "RESTART: serve stopped" })
        {
            Assert.Contains(step, stderr, StringComparison.Ordinal);
        }
        Assert.Contains("MATCH: coordinator and worker /metrics (with the metrics token; 401 without) and readiness answer across hosts", stderr, StringComparison.Ordinal);
        Assert.Contains($"joined through {store} (", stderr, StringComparison.Ordinal);
        output.WriteLine(okLine);

        // The trap removed every namespace it made.
        string prefix = stderr.Split("hosts: ", 2)[1].Split('-', 2)[0];
        var (_, list) = await RunAsync("ip", ["netns", "list"]);
        Assert.DoesNotContain(prefix + "-", list, StringComparison.Ordinal);
    }

    [NetnsFact]
    public async Task BadSubnet_ExitsWithUsageErrorAndCreatesNothing()
    {
        ToolFactAttribute.Require(Missing);
        var (exitCode, _, stderr) = await RunScriptAsync(["--model", TestPaths.Fixture("tiny-maverick"), "--subnet", "192.168.1"], TimeSpan.FromSeconds(30));
        Assert.Equal(2, exitCode);
        Assert.Contains("--subnet must be", stderr, StringComparison.Ordinal);
    }

    private async Task<(int ExitCode, string StdOut, string StdErr)> RunScriptAsync(string[] args, TimeSpan timeout)
    {
        string script = Path.Combine(TestPaths.Root, "infra", "netns-cluster.sh");
        var psi = new ProcessStartInfo("bash", [script, .. args])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = TestPaths.Root,
        };
        // The script runs the executables of the configuration these tests were built in (bin/Release or bin/Debug).
        psi.Environment["CONFIG"] = AppContext.BaseDirectory.Contains("/Debug/", StringComparison.Ordinal) ? "Debug" : "Release";
        using var process = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var outTask = Pump(process.StandardOutput, stdout, "out");
        var errTask = Pump(process.StandardError, stderr, "err");
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            // SIGTERM lets the script's trap remove the namespaces; SIGKILL only if it does not finish.
            using (var term = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await term.WaitForExitAsync();
            }
            using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try
            {
                await process.WaitForExitAsync(grace.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
            }
            Assert.Fail($"netns-cluster.sh did not finish within {timeout}; stderr tail:\n{Tail(stderr.ToString())}");
        }
        await Task.WhenAll(outTask, errTask);
        return (process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    private async Task Pump(StreamReader reader, StringBuilder sink, string tag)
    {
        while (await reader.ReadLineAsync() is { } line)
        {
            lock (sink)
            {
                sink.Append(line).Append('\n');
            }
            try
            {
                output.WriteLine($"[{tag}] {line}");
            }
            catch (InvalidOperationException)
            {
                // The test already finished.
            }
        }
    }

    private static async Task<(int ExitCode, string StdOut)> RunAsync(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        string text = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        return (p.ExitCode, text);
    }

    private static string Tail(string text) => string.Join('\n', text.Split('\n').TakeLast(60));

    private static string? Missing => MachineCapabilities.NetworkNamespacesMissing is { } reason ? "multi-host namespaces unavailable: " + reason : null;

    private sealed class NetnsFactAttribute() : ToolFactAttribute(Missing);
}
