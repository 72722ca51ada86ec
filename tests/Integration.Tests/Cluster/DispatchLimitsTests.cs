using System.Diagnostics;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Cluster;

/// <summary>
/// A step with more rows than a worker takes per request is split over several requests, never refused: workers that
/// accept 3 rows per request (<c>ExpertWorker:MaxRowsPerDispatch</c>) serve a 40-token prefill in 64-token chunks, and the
/// output is the in-process output byte for byte (fp32 wire).
/// </summary>
[Trait("Category", "Integration")]
public sealed class DispatchLimitsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task WorkersTakingThreeRowsPerRequest_ServeA40TokenPrefill_ExactlyAsInProcess()
    {
        string prompt = string.Join(",", Enumerable.Range(0, 40).Select(i => (i * 37 + 11) % 500));
        string[] common = ["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", prompt, "--max-new-tokens", "4", "--json",
            "--threads", "1", "--prefill-chunk", "64"];
        string inProcess = await RunAsync(common, new Dictionary<string, string>());
        // Workers started by the coordinator inherit its environment, and read their settings from it.
        string distributed = await RunAsync([.. common, "--local-workers", "2", "--wire", "fp32"],
            new Dictionary<string, string> { ["DISTRIBUTED_ExpertWorker__MaxRowsPerDispatch"] = "3" });
        Assert.Equal(inProcess, distributed);
    }

    private async Task<string> RunAsync(string[] args, Dictionary<string, string> environment)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(TestPaths.CoordinatorDll);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        foreach (var (k, v) in environment)
        {
            psi.Environment[k] = v;
        }
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        output.WriteLine(await stderr);
        Assert.Equal(0, process.ExitCode);
        return await stdout;
    }
}
