using System.Net;
using System.Text;
using Distributed.Coordinator.Distribution;
using Distributed.Integration.Tests.Serving;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Operations;

/// <summary>
/// The operations surface on real processes: a serve process over two local workers answers /healthz and exposes
/// its request, dispatch, worker and expert metrics in Prometheus text after a completion; a worker answers its
/// probes, its /metrics and the standard gRPC health service. Both run with a metrics token: /metrics refuses a caller
/// without it (401) while the probes stay open.
/// </summary>
[Trait("Category", "Integration")]
public sealed class OperationsEndpointsTests(ITestOutputHelper output)
{
    private const string MetricsToken = "metrics-token-0123456789abcdef";

    private static readonly Dictionary<string, string> MetricsTokenEnvironment = new() { ["DISTRIBUTED_METRICS_TOKEN"] = MetricsToken };

    /// <summary>Scrapes /metrics with the token, after checking that a scrape without it and one with a wrong token get 401.</summary>
    private static async Task<string> ScrapeAsync(HttpClient client, bool checkRefusals = false)
    {
        if (checkRefusals)
        {
            var anonymous = await client.GetAsync("/metrics");
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
            Assert.Equal("Bearer", anonymous.Headers.WwwAuthenticate.Single().Scheme);
            using var wrong = new HttpRequestMessage(HttpMethod.Get, "/metrics") { Headers = { { "Authorization", "Bearer not-the-metrics-token-000" } } };
            var refused = await client.SendAsync(wrong);
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
            Assert.DoesNotContain("moe_", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using var request = new HttpRequestMessage(HttpMethod.Get, "/metrics") { Headers = { { "Authorization", $"Bearer {MetricsToken}" } } };
        var response = await client.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadAsStringAsync();
    }

    [Fact]
    public async Task Serve_WithWorkers_ReadyAndMetricsFollowACompletion()
    {
        await using var server = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"), ["--local-workers", "2", "--threads", "1", "--wire", "fp32"], output,
            MetricsTokenEnvironment);
        using var client = new HttpClient { BaseAddress = new Uri(server.BaseAddress), Timeout = TimeSpan.FromMinutes(2) };

        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/healthz/live")).StatusCode);
        var ready = await client.GetAsync("/healthz/ready");
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        Assert.Equal("Healthy", await ready.Content.ReadAsStringAsync());

        var completion = await client.PostAsync("/v1/completions", new StringContent(
            """{"model":"tiny-maverick","prompt":[500],"max_tokens":6,"temperature":0}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, completion.StatusCode);

        string metrics = await ScrapeAsync(client, checkRefusals: true);
        var series = ParseSeries(metrics);
        Assert.Equal(1, Value(series, "moe_requests_total", "outcome=\"length\""));
        Assert.Equal(6, Value(series, "moe_tokens_generated_total"));
        Assert.Equal(1, Value(series, "moe_request_ttft_seconds_count"));
        Assert.Equal(5, Value(series, "moe_request_inter_token_seconds_count"));
        Assert.True(Value(series, "moe_placement_plan_version") >= 1);
        Assert.Equal(0, Value(series, "moe_scheduler_queue_depth"));
        Assert.Contains(series.Keys, k => k.StartsWith("moe_kv_blocks{", StringComparison.Ordinal) && k.Contains("state=\"free\"", StringComparison.Ordinal));
        // Every MoE layer (1, 3, 5) dispatched once per forward pass: 6 passes (prefill + 5 decode steps).
        foreach (string layer in new[] { "1", "3", "5" })
        {
            Assert.Equal(6, Value(series, "moe_dispatch_duration_seconds_count", $"layer=\"{layer}\""));
            Assert.Equal(6, Value(series, "moe_combine_duration_seconds_count", $"layer=\"{layer}\""));
        }
        // One routed row per token per MoE layer (top-1): 6 tokens x 3 layers, split over the experts that got them.
        double routed = series.Where(kv => kv.Key.StartsWith("moe_expert_routed_tokens_total{", StringComparison.Ordinal)).Sum(kv => kv.Value);
        Assert.Equal(18, routed);
        double rows = series.Where(kv => kv.Key.StartsWith("moe_worker_rows_total{", StringComparison.Ordinal)).Sum(kv => kv.Value);
        Assert.Equal(18, rows);
        double sent = series.Where(kv => kv.Key.StartsWith("moe_worker_bytes_total{", StringComparison.Ordinal) && kv.Key.Contains("direction=\"sent\"", StringComparison.Ordinal)).Sum(kv => kv.Value);
        Assert.Equal(18 * 64 * 4, sent); // fp32 wire: rows x hidden 64 x 4 bytes
        Assert.Contains(series.Keys, k => k.StartsWith("moe_worker_rtt_seconds_count{", StringComparison.Ordinal) && k.Contains("worker=\"worker-0\"", StringComparison.Ordinal));

        // The prefix cache (issue #14): a 40-token prompt sent twice; the second finds its first 32 tokens (2 blocks).
        Assert.Equal(0, Value(series, "moe_prefix_cache_hit_tokens_total"));
        string prompt = string.Join(",", Enumerable.Range(1, 40).Prepend(500).Take(40));
        for (int i = 0; i < 2; i++)
        {
            var again = await client.PostAsync("/v1/completions", new StringContent(
                $$"""{"model":"tiny-maverick","prompt":[{{prompt}}],"max_tokens":2,"temperature":0}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        }
        // The exporter answers repeated scrapes from a short-lived cache: read until the new counts show (bounded).
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        do
        {
            series = ParseSeries(await ScrapeAsync(client));
        }
        while (Value(series, "moe_prefix_cache_queried_tokens_total") < 81 && DateTime.UtcNow < deadline);
        Assert.Equal(1 + 40 + 40, Value(series, "moe_prefix_cache_queried_tokens_total"));
        Assert.Equal(32, Value(series, "moe_prefix_cache_hit_tokens_total"));
        Assert.Equal(0, Value(series, "moe_scheduler_preemptions_total"));
        Assert.True(Value(series, "moe_kv_blocks", "state=\"cached\"") > 0);
    }

    [Fact]
    public async Task Worker_AnswersProbesMetricsAndGrpcHealth()
    {
        var log = new TestLog { Output = output };
        string? readyLine = null;
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "all", "--threads", "1", "--worker-id", "ops-w"],
            "ops-w", line =>
            {
                if (line.Contains("EXPERT_WORKER_READY", StringComparison.Ordinal))
                {
                    readyLine = line;
                }
                log.Write(line);
            }, MetricsTokenEnvironment);
        string grpc = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        Assert.NotNull(readyLine);
        string ops = readyLine!.Split(' ').Single(p => p.StartsWith("ops=", StringComparison.Ordinal))[4..];
        Assert.StartsWith("http://127.0.0.1:", ops, StringComparison.Ordinal);
        Assert.NotEqual(grpc, ops);

        using var http = new HttpClient { BaseAddress = new Uri(ops) };
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz/live")).StatusCode);
        Assert.Equal("Healthy", await http.GetStringAsync("/healthz/ready"));
        var series = ParseSeries(await ScrapeAsync(http, checkRefusals: true));
        Assert.Equal(1, Value(series, "moe_shard_ready"));
        Assert.Equal(3 * 128, Value(series, "moe_shard_experts"));
        Assert.True(Value(series, "moe_shard_resident_bytes") > 0);

        using var channel = GrpcChannel.ForAddress(grpc);
        var health = new Health.HealthClient(channel);
        // The health service is on the data-plane port, so it needs the cluster credential like everything there.
        var unauthenticated = await Assert.ThrowsAsync<RpcException>(async () => await health.CheckAsync(new HealthCheckRequest()));
        Assert.Equal(StatusCode.Unauthenticated, unauthenticated.StatusCode);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, (await health.CheckAsync(new HealthCheckRequest(), TestCredential.Headers())).Status);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
            (await health.CheckAsync(new HealthCheckRequest { Service = "distributed.expertworker.v1.ExpertWorker" }, TestCredential.Headers())).Status);
    }

    /// <summary>Prometheus text → "name{labels}" (labels without otel_scope_name, sorted as written) → value.</summary>
    internal static Dictionary<string, double> ParseSeries(string text)
    {
        var result = new Dictionary<string, double>();
        foreach (string raw in text.Split('\n'))
        {
            string line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }
            int space = line.LastIndexOf(' ');
            string key = line[..space];
            int brace = key.IndexOf('{', StringComparison.Ordinal);
            if (brace >= 0)
            {
                var labels = key[(brace + 1)..^1].Split(',').Where(l => !l.StartsWith("otel_scope_name=", StringComparison.Ordinal));
                key = key[..brace] + (labels.Any() ? "{" + string.Join(",", labels) + "}" : "");
            }
            result[key] = double.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        }
        return result;
    }

    /// <summary>The value of the one series of <paramref name="name"/> whose labels contain every <paramref name="labels"/>.</summary>
    internal static double Value(Dictionary<string, double> series, string name, params string[] labels)
    {
        var matches = series.Where(kv => (kv.Key == name || kv.Key.StartsWith(name + "{", StringComparison.Ordinal))
            && labels.All(l => kv.Key.Contains(l, StringComparison.Ordinal))).ToList();
        Assert.True(matches.Count == 1, $"{name} {string.Join(",", labels)}: {matches.Count} series in\n{string.Join("\n", series.Keys.Where(k => k.StartsWith(name, StringComparison.Ordinal)))}");
        return matches[0].Value;
    }
}
