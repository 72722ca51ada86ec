using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Distributed.Coordinator.Distribution;
using Distributed.Integration.Tests.Serving;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Cluster;

/// <summary>
/// An expert cluster of independent processes, as an operator runs one: a real cluster store (membership, plan and
/// operation log: a redis-server, or a PostgreSQL database that the first worker gives the project's schema), worker
/// processes started one by one with <c>--clustering Redis|AdoNet</c>, and <c>serve</c> joining the same cluster by its
/// membership options (never told where the workers are). Kills everything on dispose.
/// </summary>
internal sealed class IndependentCluster : IAsyncDisposable
{
    public const string AdminTokenVariable = "TEST_ADMIN_TOKEN";
    public const string AdminToken = "test-admin-token-0123456789abcdef";

    private readonly TestLog _log;
    private readonly List<WorkerProcess> _workers = [];

    private readonly IAsyncDisposable _store;

    private IndependentCluster(IAsyncDisposable store, string[] membership, TestLog log)
    {
        _store = store;
        Membership = membership;
        _log = log;
        ClusterId = $"it-{Guid.NewGuid():N}"[..16];
    }

    /// <summary>The membership options workers and serve share (<c>--clustering</c> and the store's address).</summary>
    public string[] Membership { get; }

    public string ClusterId { get; }

    public ServeProcess? Serve { get; private set; }

    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromMinutes(3) };

    public IReadOnlyList<WorkerProcess> Workers => _workers;

    /// <summary>Environment every process of the cluster gets (credentials shared by the cluster).</summary>
    public Dictionary<string, string> Environment { get; } = new() { [AdminTokenVariable] = AdminToken };

    /// <summary>A cluster on a fresh redis-server.</summary>
    public static async Task<IndependentCluster> StartAsync(TestLog log)
    {
        var redis = await RedisServer.StartAsync(log.Write);
        return new IndependentCluster(redis, ["--clustering", "Redis", "--redis", redis.Connection], log);
    }

    /// <summary>A cluster on an empty database of a fresh PostgreSQL (the workers apply the schema).</summary>
    public static async Task<IndependentCluster> StartPostgresAsync(TestLog log)
    {
        var pg = await PostgresServer.StartAsync(log.Write);
        try
        {
            string db = await pg.CreateDatabaseAsync("cluster");
            return new IndependentCluster(pg, ["--clustering", "AdoNet", "--Cluster:AdoNetConnectionString", db], log);
        }
        catch
        {
            await pg.DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts worker <c>w{index}</c> joined to the cluster (fast failure detection) and waits for its ready line.</summary>
    public async Task<WorkerProcess> StartWorkerAsync(int index)
    {
        int[] ports = WorkerProcess.FreePorts(2);
        var args = new List<string>(Membership)
        {
            "--model", TestPaths.Fixture("tiny-maverick"), "--worker-id", $"w{index}", "--threads", "1",
            "--cluster-id", ClusterId, "--advertised-address", "127.0.0.1",
            "--silo-port", ports[0].ToString(CultureInfo.InvariantCulture), "--gateway-port", ports[1].ToString(CultureInfo.InvariantCulture),
            "--ops-port", "-1", "--Placement:SettleDelay", "00:00:00.2", "--ExpertWorker:RetireDelay", "00:00:01",
            "--probe-timeout", "00:00:01", "--Cluster:NumMissedProbesLimit", "2", "--Placement:ProbeTimeout", "00:00:01",
        };
        var worker = WorkerProcess.Start(WorkerPath, args, $"w{index}", _log.Write, Environment);
        _workers.Add(worker);
        await worker.WaitReadyAsync(TimeSpan.FromMinutes(2), CancellationToken.None);
        return worker;
    }

    private static string WorkerPath => WorkerProcess.LocateWorker();

    /// <summary>Starts <c>serve</c> with <see cref="Membership"/> (fp32 wire: tokens are exact) and waits for its listening line.</summary>
    public async Task<ServeProcess> StartServeAsync(ITestOutputHelper output, params string[] extra)
    {
        var args = new List<string>(Membership)
        {
            "--cluster-id", ClusterId, "--admin-token-env", AdminTokenVariable,
            "--wire", "fp32", "--threads", "1", "--max-running", "8", "--max-batch-tokens", "64", "--prefill-chunk", "32",
            "--Distribution:DispatchTimeout", "00:00:20",
        };
        args.AddRange(extra);
        Serve = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"), args, output, Environment);
        return Serve;
    }

    /// <summary>Forgets the serve process (after it was stopped) without disposing it twice.</summary>
    public async Task StopServeAsync()
    {
        if (Serve is not null)
        {
            await Serve.DisposeAsync();
            Serve = null;
        }
    }

    public async Task<JsonElement> AdminGetAsync(string path)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, Serve!.BaseAddress + "/admin/v1/" + path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
        using var response = await Http.SendAsync(request);
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"GET {path}: {(int)response.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    public async Task<JsonElement> AdminPostAsync(string path, string json = "{}")
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, Serve!.BaseAddress + "/admin/v1/" + path) { Content = SseClient.Json(json) };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
        using var response = await Http.SendAsync(request);
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"POST {path}: {(int)response.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    /// <summary>Polls <paramref name="condition"/> (an endpoint's answer) until it holds; fails naming <paramref name="what"/> after <paramref name="timeout"/>.</summary>
    public static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(200));
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out after {timeout.TotalSeconds:F0} s waiting for {what}");
            await tick.WaitForNextTickAsync();
        }
    }

    public async Task<bool> ReadyAsync()
    {
        try
        {
            using var r = await Http.GetAsync(Serve!.BaseAddress + "/healthz/ready");
            return r.StatusCode == HttpStatusCode.OK;
        }
        catch (HttpRequestException)
        {
            return false;
        }
    }

    /// <summary>Greedy completion of <paramref name="prompt"/> (token ids): the generated token ids.</summary>
    public async Task<string> CompleteAsync(int[] prompt, int maxTokens, CancellationToken cancellationToken = default)
    {
        string json = $$"""{"model":"tiny-maverick","prompt":[{{string.Join(",", prompt)}}],"max_tokens":{{maxTokens}},"temperature":0,"return_token_ids":true}""";
        var (status, body, response) = await SseClient.PostAsync(Http, Serve!.BaseAddress + "/v1/completions", json, cancellationToken);
        response.Dispose();
        Assert.True(status == HttpStatusCode.OK, $"completion failed: {(int)status} {body}");
        return string.Join(",", SseClient.Ints(body.GetProperty("choices")[0].GetProperty("token_ids")));
    }

    public async ValueTask DisposeAsync()
    {
        await StopServeAsync();
        await Task.WhenAll(_workers.Select(w => w.DisposeAsync().AsTask()));
        Http.Dispose();
        await _store.DisposeAsync();
    }
}
