using System.Collections.Concurrent;
using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Grpc.Net.Client;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// A worker without the cluster credential does not start (exit 2, the reason named) unless told to run without one
/// for development, and then only on loopback; a weak token does not start it either, and is never printed.
/// </summary>
[Trait("Category", "Integration")]
public sealed class WorkerCredentialStartupTests(ITestOutputHelper output)
{
    private async Task<(WorkerProcess Worker, ConcurrentQueue<string> Lines)> StartAsync(string? token, params string[] extra)
    {
        var lines = new ConcurrentQueue<string>();
        var log = new TestLog { Output = output };
        var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "1:0-3", "--threads", "1", "--worker-id", "cred", .. extra],
            "cred", line =>
            {
                lines.Enqueue(line);
                log.Write(line);
            }, new Dictionary<string, string> { [ClusterToken.EnvironmentVariable] = token ?? "" });
        await Task.Yield();
        return (worker, lines);
    }

    private static async Task<int> ExitCodeAsync(WorkerProcess worker)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await worker.WaitForExitAsync(timeout.Token);
        return worker.ExitCode!.Value;
    }

    [Fact]
    public async Task NoToken_ExitsWithCode2_NamingTheVariable()
    {
        var (worker, lines) = await StartAsync(null);
        await using (worker)
        {
            Assert.Equal(2, await ExitCodeAsync(worker));
            Assert.Contains(lines, l => l.Contains(ClusterToken.EnvironmentVariable, StringComparison.Ordinal) && l.Contains("AllowUnauthenticated", StringComparison.Ordinal));
            Assert.DoesNotContain(lines, l => l.Contains("Unhandled exception", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task WeakToken_ExitsWithCode2_WithoutPrintingIt()
    {
        const string Weak = "distributed-distributed-distributed-1";
        var (worker, lines) = await StartAsync(Weak);
        await using (worker)
        {
            Assert.Equal(2, await ExitCodeAsync(worker));
            Assert.Contains(lines, l => l.Contains("too predictable", StringComparison.Ordinal));
            Assert.DoesNotContain(lines, l => l.Contains(Weak, StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task AllowUnauthenticated_OffLoopback_ExitsWithCode2_BeforeListening()
    {
        // --insecure gets past the refusal of cleartext off loopback; a worker without a token is still refused there.
        var (worker, lines) = await StartAsync(null, "--allow-unauthenticated", "true", "--grpc-host", "0.0.0.0", "--insecure");
        await using (worker)
        {
            Assert.Equal(2, await ExitCodeAsync(worker));
            Assert.Contains(lines, l => l.Contains("loopback only", StringComparison.Ordinal));
            Assert.DoesNotContain(lines, l => l.Contains(WorkerProcess.ReadyMarker, StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task AllowUnauthenticated_OnLoopback_Serves_AndSaysSoInItsLog()
    {
        var (worker, lines) = await StartAsync(null, "--allow-unauthenticated", "true");
        await using (worker)
        {
            string address = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
            Assert.Contains(lines, l => l.Contains("NO cluster credential", StringComparison.Ordinal));
            using var channel = GrpcChannel.ForAddress(address);
            var hello = await channel.CreateCallInvoker().AsyncUnaryCall(ExpertWorkerMethods.Hello, null, new CallOptions(deadline: DateTime.UtcNow.AddSeconds(20)),
                new HelloRequest { ProtocolMajor = ProtocolVersion.Major, ModelFingerprint = "" }).ResponseAsync.ContinueWith(t => t.Exception?.InnerException as RpcException);
            // Reaches the handshake's own checks (a fingerprint mismatch), not the credential check.
            Assert.Equal(StatusCode.FailedPrecondition, hello?.StatusCode);
        }
    }
}
