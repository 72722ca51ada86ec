using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary><c>infer --local-workers N</c> and <c>infer --workers</c> with <c>--wire fp32</c> print exactly the in-process JSON.</summary>
[Trait("Category", "Integration")]
public sealed class InferCliTests(ITestOutputHelper output)
{
    private static readonly string[] Common = ["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "500,17,300,42", "--max-new-tokens", "6", "--json", "--threads", "1"];

    private async Task<string> RunAsync(params string[] extra)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync([.. Common, .. extra], stdout, stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, rc);
        return stdout.ToString();
    }

    [Fact]
    public async Task LocalWorkers_Fp32_PrintsTheInProcessJson_AndStopsItsWorkers()
    {
        string inProcess = await RunAsync();
        string distributed = await RunAsync("--local-workers", "2", "--wire", "fp32");
        Assert.Equal(inProcess, distributed);
    }

    // Two running workers splitting tiny-maverick's experts (static shards), each with its own id and extra options.
    private async Task<(WorkerProcess A, WorkerProcess B, string AddressA, string AddressB)> StartTwoWorkersAsync(
        string idA, string[] extraA, string idB, string[] extraB)
    {
        var log = new TestLog { Output = output };
        var a = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "1:0-127,3:0-63", "--threads", "1", "--worker-id", idA, .. extraA], "a", log.Write);
        var b = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "3:64-127,5:0-127", "--threads", "1", "--worker-id", idB, .. extraB], "b", log.Write);
        try
        {
            return (a, b, await a.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None),
                await b.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None));
        }
        catch
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
            throw;
        }
    }

    [Fact]
    public async Task RunningWorkers_Fp32_PrintsTheInProcessJson()
    {
        var (a, b, addrA, addrB) = await StartTwoWorkersAsync("a", [], "b", []);
        await using var disposeA = a;
        await using var disposeB = b;
        string inProcess = await RunAsync();
        string distributed = await RunAsync("--workers", $"{addrA},{addrB["http://".Length..]}", "--wire", "fp32");
        Assert.Equal(inProcess, distributed);
    }

    /// <summary>
    /// Placement independence holds in the bf16 precision too: the local workers inherit <c>--cpu-precision bf16</c>,
    /// and with fp32 on the wire the distributed run prints exactly the in-process JSON (and differs from fp32's).
    /// </summary>
    [Bf16Fact]
    public async Task LocalWorkers_Bf16Precision_Fp32Wire_PrintsTheInProcessJson()
    {
        string inProcess = await RunAsync("--cpu-precision", "bf16");
        string distributed = await RunAsync("--cpu-precision", "bf16", "--local-workers", "2", "--wire", "fp32");
        Assert.Equal(inProcess, distributed);
        Assert.NotEqual(await RunAsync(), inProcess);
    }

    /// <summary>
    /// Workers report their kernel arithmetic in the handshake; a fleet that mixes them still serves, and the coordinator
    /// warns, naming both workers, because outputs then depend on placement.
    /// </summary>
    [Bf16Fact]
    public async Task RunningWorkers_MixedPrecisions_AreServedWithAWarningNamingBoth()
    {
        var (a, b, addrA, addrB) = await StartTwoWorkersAsync("fp32-worker", [], "bf16-worker", ["--cpu-precision", "bf16"]);
        await using var disposeA = a;
        await using var disposeB = b;
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync([.. Common, "--workers", $"{addrA},{addrB}", "--wire", "fp32"], new StringWriter(), stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, rc);
        string text = stderr.ToString();
        Assert.Contains("computes experts in cpu-", text, StringComparison.Ordinal);
        Assert.Contains("fp32-worker", text, StringComparison.Ordinal);
        Assert.Contains("bf16-worker", text, StringComparison.Ordinal);
    }

    /// <summary>
    /// Where the bf16 precision cannot run (here: the runtime told to use no AVX-512), asking for it is refused at startup
    /// with the reason and exit code 1, not by a crash and not by quietly computing in fp32.
    /// </summary>
    [Fact]
    public async Task Bf16Precision_WithoutAvx512_IsRefusedAtStartupWithTheReason()
    {
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        string[] args = [TestPaths.CoordinatorDll, .. Common[..^2], "--cpu-precision", "bf16", "--backend", "cpu"];
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        psi.Environment["DOTNET_EnableAVX512"] = "0";
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = await p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        finally
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
            }
        }
        output.WriteLine(stderr);
        Assert.Equal(1, p.ExitCode);
        Assert.Equal("", await stdout);
        Assert.Contains("bf16 is not available", stderr, StringComparison.Ordinal);
        Assert.Contains("AVX-512", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--cpu-precision", "fp16")]
    [InlineData("--local-workers", "2", "--workers", "127.0.0.1:1")]
    [InlineData("--local-workers", "0", "--wire", "fp32")]
    [InlineData("--workers", "127.0.0.1:5000", "--wire", "fp16")]
    [InlineData("--workers", "127.0.0.1", "--wire", "fp32")]
    [InlineData("--wire", "fp16")]
    public async Task BadDistributionOptions_AreUsageErrors(params string[] extra)
    {
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync([.. Common, .. extra.Where(e => e != "--json")], new StringWriter(), stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(2, rc);
    }
}
