using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Distributed.Coordinator.Distribution;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// A worker that cannot start a listener or its silo (here: its silo port or its gRPC port is taken) exits with code 4
/// and one line naming what failed and why, instead of dying of an unhandled exception.
/// </summary>
[Trait("Category", "Integration")]
public sealed class WorkerStartupTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("--silo-port", "the Orleans silo did not start")]
    [InlineData("--grpc-port", "the data-plane listeners did not start")]
    public async Task PortInUse_ExitsWithCode4NamingWhatFailed(string option, string expected)
    {
        int[] ports = WorkerProcess.FreePorts(3);
        using var taken = new TcpListener(IPAddress.Loopback, ports[0]);
        taken.Start();
        var lines = new ConcurrentQueue<string>();
        var log = new TestLog { Output = output };
        var args = new List<string> { "--model", TestPaths.Fixture("tiny-maverick"), "--threads", "1", "--worker-id", "busy", option, ports[0].ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (option == "--silo-port")
        {
            args.AddRange(["--gateway-port", ports[1].ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }
        else
        {
            args.AddRange(["--silo-port", ports[1].ToString(System.Globalization.CultureInfo.InvariantCulture),
                "--gateway-port", ports[2].ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(), args, "busy", line =>
        {
            lines.Enqueue(line);
            log.Write(line);
        });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await worker.WaitForExitAsync(timeout.Token);
        Assert.Equal(4, worker.ExitCode);
        Assert.Contains(lines, l => l.Contains($"expert worker: {expected}", StringComparison.Ordinal) && l.Contains(ports[0].ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("Unhandled exception", StringComparison.Ordinal));
    }

    /// <summary>A kernel setting the machine cannot run (bf16 with AVX-512 disabled) is a configuration error: exit 2, the reason named.</summary>
    [Fact]
    public async Task Bf16PrecisionWithoutAvx512_ExitsWithCode2NamingTheReason()
    {
        var lines = new ConcurrentQueue<string>();
        var log = new TestLog { Output = output };
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--threads", "1", "--worker-id", "nobf16", "--backend", "cpu", "--cpu-precision", "bf16",
             "--experts", "1:0-127"],
            "nobf16", line =>
            {
                lines.Enqueue(line);
                log.Write(line);
            }, new Dictionary<string, string> { ["DOTNET_EnableAVX512"] = "0" });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await worker.WaitForExitAsync(timeout.Token);
        Assert.Equal(2, worker.ExitCode);
        Assert.Contains(lines, l => l.Contains("expert worker: Kernels:CpuPrecision bf16 is not available", StringComparison.Ordinal));
    }
}
