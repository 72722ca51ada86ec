using System.Net;
using System.Net.Http.Json;
using System.Text;
using Distributed.Coordinator.Admin;
using Distributed.Integration.Tests.Serving;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Dashboard;

/// <summary>
/// The cluster dashboard served by a real <c>serve --local-workers 2 --admin-port 0</c> process: the page and its assets
/// are served without a token while the data API still refuses anonymous calls, and (where Debian's chromium, node and
/// playwright-core are installed) a headless browser loads the page, sees the live cluster and drains a worker from it.
/// </summary>
[Trait("Category", "Integration")]
public sealed class DashboardTests(DashboardTests.ServeCluster cluster, ITestOutputHelper output) : IClassFixture<DashboardTests.ServeCluster>
{
    private static readonly string BrowserDirectory = Path.Combine(TestPaths.Root, "tests", "Integration.Tests", "Dashboard", "browser");

    [Fact]
    public async Task Page_ServedWithoutToken_DataStillNeedsIt()
    {
        cluster.Serve.Output = output;
        using var http = new HttpClient { BaseAddress = new Uri(cluster.AdminAddress) };
        var page = await http.GetAsync("/admin/dashboard");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        string csp = string.Join(";", page.Headers.GetValues("Content-Security-Policy"));
        Assert.Contains("default-src 'none'", csp, StringComparison.Ordinal);
        Assert.Contains("connect-src 'self'", csp, StringComparison.Ordinal);
        Assert.Equal("nosniff", page.Headers.GetValues("X-Content-Type-Options").Single());
        string html = await page.Content.ReadAsStringAsync();
        Assert.Contains("id=\"workers\"", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<script>", html, StringComparison.Ordinal);

        foreach (var (path, type) in new[] { ("/admin/dashboard/dashboard.js", "text/javascript"), ("/admin/dashboard/dashboard.css", "text/css") })
        {
            var asset = await http.GetAsync(path);
            Assert.Equal(HttpStatusCode.OK, asset.StatusCode);
            Assert.Equal(type, asset.Content.Headers.ContentType?.MediaType);
            string text = await asset.Content.ReadAsStringAsync();
            // No CDN, no third-party origin: the page must work on a cluster without internet access.
            Assert.DoesNotMatch(@"(src|href|url)\s*[=(]\s*['""]?(https?:)?//", text);
        }
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/admin/dashboard/other.js")).StatusCode);

        // The page's own data calls, made without the token, are refused.
        foreach (var path in new[] { "/admin/v1/cluster", "/admin/v1/placement", "/admin/v1/experts/load", "/admin/v1/serving" })
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync(path)).StatusCode);
        }
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsync("/admin/v1/workers/worker-1/drain", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsync("/admin/v1/rebalance",
            new StringContent("""{"dry_run":true}""", Encoding.UTF8, "application/json"))).StatusCode);
    }

    [BrowserFact]
    public async Task Browser_ShowsLiveClusterAndDrainsAWorker()
    {
        ToolFactAttribute.Require(BrowserFactAttribute.Missing());
        cluster.Serve.Output = output;
        string outDir = Path.Combine(AppContext.BaseDirectory, "TestResults", "dashboard");
        Directory.CreateDirectory(outDir);
        using var traffic = new CancellationTokenSource();
        // Completions keep flowing while the browser watches, so load, traffic and the charts have something to show.
        await cluster.CompleteAsync(CancellationToken.None);
        var load = Task.Run(async () =>
        {
            while (!traffic.IsCancellationRequested)
            {
                await cluster.CompleteAsync(traffic.Token);
                await Task.Delay(150, traffic.Token);
            }
        });

        int code;
        try
        {
            (code, _) = await NodeScript.RunAsync(BrowserDirectory, ["dashboard.test.mjs", "--url", cluster.AdminAddress, "--token", ServeCluster.Token, "--drain", "worker-1",
                "--out", outDir, "--chromium", BrowserFactAttribute.Chromium], TimeSpan.FromMinutes(4), output);
        }
        finally
        {
            await traffic.CancelAsync();
            await Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(30)));
        }
        output.WriteLine($"screenshots: {outDir}");
        Assert.True(code == 0, $"the browser test failed (exit {code}); see its output above and {outDir}");

        using var http = cluster.AdminClient();
        var info = await http.GetFromJsonAsync<ClusterInfo>("/admin/v1/cluster", AdminEndpoints.Json);
        Assert.Equal("Drained", info!.Workers.Single(w => w.Id == "worker-1").State);
        Assert.Equal(0, info.Workers.Single(w => w.Id == "worker-1").ExpertsAssigned);
        Assert.True(info.Serving, info.Problem);
        var placement = await http.GetFromJsonAsync<PlacementInfo>("/admin/v1/placement", AdminEndpoints.Json);
        Assert.DoesNotContain(placement!.Layers.SelectMany(l => l.Experts), e => e.Workers.Contains("worker-1"));
        Assert.True(File.Exists(Path.Combine(outDir, "dashboard-drained.png")));
        await cluster.CompleteAsync(CancellationToken.None);
    }

    /// <summary>Runs only where the browser test can: Debian's chromium, node on PATH and playwright-core installed.</summary>
    public sealed class BrowserFactAttribute : ToolFactAttribute
    {
        /// <summary>The chromium binary (<c>DISTRIBUTED_CHROMIUM</c>, else Debian's).</summary>
        public static string Chromium { get; } = Environment.GetEnvironmentVariable("DISTRIBUTED_CHROMIUM") is { Length: > 0 } c ? c : "/usr/bin/chromium";

        public BrowserFactAttribute()
            : base(Missing())
        {
        }

        /// <summary>What the browser test lacks here, or null.</summary>
        public static string? Missing()
        {
            var missing = new List<string>();
            if (!File.Exists(Chromium))
            {
                missing.Add($"chromium ({Chromium}; apt-get install chromium)");
            }
            if (!TestProcesses.OnPath("node"))
            {
                missing.Add("node (apt-get install nodejs)");
            }
            if (!File.Exists(Path.Combine(BrowserDirectory, "node_modules", "playwright-core", "package.json")))
            {
                missing.Add($"playwright-core (npm ci --prefix {Path.GetRelativePath(TestPaths.Root, BrowserDirectory)})");
            }
            return missing.Count > 0 ? "the dashboard browser test needs " + string.Join(", ", missing) : null;
        }
    }

    /// <summary>One <c>serve</c> process with two local workers and the admin API (and dashboard) on its own loopback port.</summary>
    public sealed class ServeCluster : IAsyncLifetime
    {
        public const string Token = "dashboard-test-token-0123456789";
        private const string TokenVariable = "DISTRIBUTED_ADMIN_TOKEN_DASHBOARD_TEST";

        internal ServeProcess Serve { get; private set; } = null!;

        /// <summary>Base address of the admin listener, e.g. <c>http://127.0.0.1:41234</c>.</summary>
        public string AdminAddress { get; private set; } = "";

        public HttpClient AdminClient()
        {
            var client = new HttpClient { BaseAddress = new Uri(AdminAddress), Timeout = TimeSpan.FromSeconds(60) };
            client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Token);
            return client;
        }

        /// <summary>One short completion through the OpenAI endpoint (routes tokens through the workers).</summary>
        public async Task CompleteAsync(CancellationToken cancellationToken)
        {
            using var http = new HttpClient { BaseAddress = new Uri(Serve.BaseAddress), Timeout = TimeSpan.FromSeconds(60) };
            try
            {
                var response = await http.PostAsync("/v1/completions",
                    new StringContent("""{"model":"tiny-maverick","prompt":"hello world","max_tokens":6,"temperature":0}""", Encoding.UTF8, "application/json"),
                    cancellationToken);
                Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync(CancellationToken.None));
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                // The browser test finished; the traffic loop stops here.
            }
        }

        public async Task InitializeAsync()
        {
            Environment.SetEnvironmentVariable(TokenVariable, Token);
            try
            {
                Serve = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"),
                    ["--local-workers", "2", "--wire", "fp32", "--admin-port", "0", "--admin-token-env", TokenVariable]);
            }
            finally
            {
                Environment.SetEnvironmentVariable(TokenVariable, null);
            }
            string line = Serve.Lines.First(l => l.StartsWith("admin API at ", StringComparison.Ordinal));
            AdminAddress = line["admin API at ".Length..].Split(' ')[0].Replace(AdminEndpoints.Prefix, "", StringComparison.Ordinal);
        }

        public async Task DisposeAsync()
        {
            if (Serve is not null)
            {
                await Serve.DisposeAsync();
            }
        }
    }
}
