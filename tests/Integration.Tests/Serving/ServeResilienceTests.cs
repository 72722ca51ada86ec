using System.Diagnostics;
using System.Net;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>
/// serve with local workers, as an operator watches it: a normal start is quiet, a worker's death is in serve's own log
/// at once, serve keeps answering while its workers crash (with a bounded log), and SIGTERM stops it and its workers
/// within 10 s.
/// </summary>
[Trait("Category", "Integration")]
public sealed partial class ServeResilienceTests(ITestOutputHelper output)
{
    [Fact]
    public async Task LocalWorkers_NormalStartIsQuiet_CrashesAreLoggedServeStaysResponsive_SigtermStopsAllWithin10s()
    {
        await using var server = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"),
            ["--local-workers", "2", "--Distribution:RecoveryTimeout", "00:00:05", "--Distribution:DispatchTimeout", "00:00:05"], output);
        using var http = new HttpClient { BaseAddress = new Uri(server.BaseAddress), Timeout = TimeSpan.FromSeconds(60) };
        string prompt = """{"model":"tiny-maverick","prompt":[500,12,7],"max_tokens":4,"temperature":0}""";
        using (var ok = await http.PostAsync("/v1/completions", SseClient.Json(prompt)))
        {
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        }

        // A newcomer can trust the log: no fail/crit line, each worker announced ready once.
        var startLines = server.Lines.ToList();
        Assert.DoesNotContain(startLines, l => l.Contains("fail:", StringComparison.Ordinal) || l.Contains("crit:", StringComparison.Ordinal));
        Assert.Single(startLines, l => l.StartsWith("worker-0 ready at ", StringComparison.Ordinal));
        Assert.Single(startLines, l => l.StartsWith("worker-1 ready at ", StringComparison.Ordinal));

        // Both workers die (SIGKILL). serve says so at once, naming the signal.
        var pids = WorkerPids(startLines);
        Assert.Equal(2, pids.Count);
        int linesBefore = server.Lines.Count;
        foreach (int pid in pids)
        {
            using var kill = Process.Start("kill", ["-KILL", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
            await kill.WaitForExitAsync();
        }
        await WaitForAsync(() => server.Lines.Count(l => l.Contains("exited: killed by SIGKILL", StringComparison.Ordinal)) == 2, TimeSpan.FromSeconds(10), "both exits in serve's log");

        // serve keeps answering: liveness at once, readiness says why not, a generation fails with a clear error in bounded time.
        var sw = Stopwatch.StartNew();
        using (var live = await http.GetAsync("/healthz/live"))
        {
            Assert.Equal(HttpStatusCode.OK, live.StatusCode);
        }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"liveness took {sw.Elapsed}");
        await WaitForAsync(async () =>
        {
            using var ready = await http.GetAsync("/healthz/ready");
            return ready.StatusCode == HttpStatusCode.ServiceUnavailable;
        }, TimeSpan.FromSeconds(60), "readiness 503 after the workers died");
        sw.Restart();
        using (var failed = await http.PostAsync("/v1/completions", SseClient.Json(prompt)))
        {
            string body = await failed.Content.ReadAsStringAsync();
            output.WriteLine($"completion without workers: {(int)failed.StatusCode} {body} after {sw.ElapsedMilliseconds} ms");
            Assert.True((int)failed.StatusCode >= 500, body);
        }
        using (var models = await http.GetAsync("/v1/models"))
        {
            Assert.Equal(HttpStatusCode.OK, models.StatusCode);
        }

        // The log volume of the outage is bounded (the window above spans the recovery timeout and more).
        int outageLines = server.Lines.Count - linesBefore;
        output.WriteLine($"{outageLines} log lines during the outage");
        Assert.True(outageLines < 200, $"{outageLines} log lines in the outage");

        // SIGTERM stops serve (and whatever it started) within 10 s.
        sw.Restart();
        int code = await server.TerminateAsync(TimeSpan.FromSeconds(10));
        output.WriteLine($"serve exited {code} {sw.ElapsedMilliseconds} ms after SIGTERM");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task LocalWorkers_Sigterm_StopsServeAndItsWorkersWithin10s()
    {
        await using var server = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"), ["--local-workers", "2"], output);
        var pids = WorkerPids(server.Lines.ToList());
        Assert.Equal(2, pids.Count);
        var sw = Stopwatch.StartNew();
        Assert.Equal(0, await server.TerminateAsync(TimeSpan.FromSeconds(10)));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"serve took {sw.Elapsed}");
        foreach (int pid in pids)
        {
            Assert.False(IsRunning(pid), $"worker pid {pid} still runs after serve exited");
        }
    }

    private static List<int> WorkerPids(List<string> lines)
        => [.. lines.Select(l => ReadyLine().Match(l)).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).Distinct()];

    private static bool IsRunning(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static Task WaitForAsync(Func<bool> condition, TimeSpan timeout, string what)
        => WaitForAsync(() => Task.FromResult(condition()), timeout, what);

    private static async Task WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out after {timeout.TotalSeconds:F0} s waiting for {what}");
            await tick.WaitForNextTickAsync();
        }
    }

    [GeneratedRegex(@"^worker-\d+ ready at \S+ \(pid (\d+)\)$")]
    private static partial Regex ReadyLine();
}
