using System.Text.Json;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Cluster;

/// <summary>
/// Issue #10's loopback acceptance: independent processes joined through a real Redis, and the same through a real
/// PostgreSQL on the project's own schema, serve following the cluster by its membership options alone. Workers join, are drained and stopped, die, and serve restarts, while greedy
/// requests keep their exact tokens (fp32 wire).
/// </summary>
[Trait("Category", "Integration")]
public sealed class IndependentClusterTests(ITestOutputHelper output)
{
    private static readonly int[][] Prompts =
    [
        [500, 12, 7], [3, 141, 59, 26], [300, 301, 2], [77, 88, 99, 1, 5], [100, 4], [42, 43, 44, 45, 46, 47],
    ];

    private const int MaxTokens = 24;

    [RedisFact]
    public async Task RedisCluster_JoinKillDrainRestart_ServeKeepsEveryRequestAndToken()
    {
        ToolFactAttribute.Require(RedisServer.Missing);
        var log = new TestLog { Output = output };
        await using var cluster = await IndependentCluster.StartAsync(log);
        await JoinKillDrainRestartAsync(cluster);
    }

    [PostgresFact]
    public async Task PostgresCluster_JoinKillDrainRestart_ServeKeepsEveryRequestAndToken()
    {
        ToolFactAttribute.Require(PostgresServer.Missing);
        var log = new TestLog { Output = output };
        await using var cluster = await IndependentCluster.StartPostgresAsync(log);
        await JoinKillDrainRestartAsync(cluster);
    }

    private async Task JoinKillDrainRestartAsync(IndependentCluster cluster)
    {
        await cluster.StartWorkerAsync(0);
        await cluster.StartWorkerAsync(1);
        var serve = await cluster.StartServeAsync(output);
        await IndependentCluster.WaitUntilAsync(cluster.ReadyAsync, TimeSpan.FromMinutes(2), "serve ready on the cluster");

        // The admin API lists both workers Active.
        var info = await cluster.AdminGetAsync("cluster");
        Assert.Equal(["w0", "w1"], Workers(info, "Active"));
        var baseline = await Task.WhenAll(Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens)));

        // A third worker started later becomes Active with experts.
        await cluster.StartWorkerAsync(2);
        await IndependentCluster.WaitUntilAsync(async () =>
        {
            var c = await cluster.AdminGetAsync("cluster");
            return c.GetProperty("serving").GetBoolean() && c.GetProperty("workers").EnumerateArray()
                .Any(w => w.GetProperty("id").GetString() == "w2" && w.GetProperty("state").GetString() == "Active" && w.GetProperty("experts_held").GetInt32() > 0);
        }, TimeSpan.FromMinutes(1), "w2 Active with experts");
        Assert.Equal(baseline, await Task.WhenAll(Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens))));

        // SIGKILL of a worker while 6 greedy requests are in flight loses none and changes no token.
        var inFlight = Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens)).ToArray();
        await IndependentCluster.WaitUntilAsync(async () =>
        {
            var s = await cluster.AdminGetAsync("serving");
            return s.GetProperty("running").GetInt32() + s.GetProperty("queued").GetInt32() > 0;
        }, TimeSpan.FromSeconds(30), "requests in flight");
        cluster.Workers[1].Kill();
        Assert.Equal(baseline, await Task.WhenAll(inFlight));
        Assert.Equal(baseline, await Task.WhenAll(Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens))));

        // A drain through the admin API, then SIGTERM of that worker, changes nothing.
        var drain = await cluster.AdminPostAsync("workers/w2/drain");
        string op = drain.GetProperty("id").GetString()!;
        await IndependentCluster.WaitUntilAsync(async () =>
        {
            var o = await cluster.AdminGetAsync("operations/" + op);
            Assert.True(o.GetProperty("state").GetString() != "Failed", $"the drain failed: {o}");
            return o.GetProperty("state").GetString() == "Completed";
        }, TimeSpan.FromMinutes(1), "drain completed");
        var duringStop = Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens)).ToArray();
        cluster.Workers[2].Terminate();
        await cluster.Workers[2].WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(baseline, await Task.WhenAll(duringStop));
        Assert.Equal(baseline, await Task.WhenAll(Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens))));

        // Restarting serve resumes with the same plan version and the same tokens.
        long version = (await cluster.AdminGetAsync("cluster")).GetProperty("plan_version").GetInt64();
        var stopped = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal(0, await serve.TerminateAsync(TimeSpan.FromSeconds(10)));
        output.WriteLine($"serve stopped on SIGTERM in {stopped.ElapsedMilliseconds} ms");
        await cluster.StopServeAsync();
        await cluster.StartServeAsync(output);
        await IndependentCluster.WaitUntilAsync(cluster.ReadyAsync, TimeSpan.FromMinutes(1), "restarted serve ready");
        Assert.Equal(version, (await cluster.AdminGetAsync("cluster")).GetProperty("plan_version").GetInt64());
        Assert.Equal(baseline, await Task.WhenAll(Prompts.Select(p => cluster.CompleteAsync(p, MaxTokens))));
    }

    private static string[] Workers(JsonElement cluster, string state)
        => [.. cluster.GetProperty("workers").EnumerateArray().Where(w => w.GetProperty("state").GetString() == state)
            .Select(w => w.GetProperty("id").GetString()!).Order(StringComparer.Ordinal)];
}
