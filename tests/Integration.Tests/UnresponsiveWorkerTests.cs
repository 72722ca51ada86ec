using System.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Moe;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>A worker that stops answering (SIGSTOP: sockets stay open) fails the dispatch at its deadline, never hangs.</summary>
[Trait("Category", "Integration")]
public sealed class UnresponsiveWorkerTests(ITestOutputHelper output)
{
    [Fact]
    public async Task StoppedWorker_DispatchFailsWithDeadlineExceeded_NamingTheWorker()
    {
        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "all", "--threads", "1", "--worker-id", "sleepy"], "sleepy", log.Write);
        string address = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        var options = new DistributionOptions { WireDType = WireDType.Fp32, DispatchTimeout = TimeSpan.FromSeconds(1.5) };
        await using var pool = new WorkerChannelPool(model, options, loggerFactory.CreateLogger<WorkerChannelPool>());
        var endpoint = new WorkerEndpoint("sleepy", address);
        var connection = await pool.GetAsync(endpoint, CancellationToken.None);
        var table = ExpertPlacementTable.FromHandshakes(model, [(endpoint, connection.Hello)]);
        var dispatcher = new GrpcExpertDispatcher(new StaticPlacementSource(table), pool);

        var hidden = new float[3 * model.HiddenSize];
        hidden.AsSpan().Fill(0.25f);
        var routing = new RoutingResult(new[] { 5, 9, 5 }, new[] { 0.5f, 0.25f, 1f }, 1);
        var outputRows = new float[hidden.Length];
        var handle = await dispatcher.DispatchAsync(1, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, outputRows, CancellationToken.None);
        Assert.Contains(outputRows, v => v != 0);

        worker.Signal(stop: true);
        try
        {
            var sw = Stopwatch.StartNew();
            var ex = await Assert.ThrowsAsync<ExpertDispatchException>(async () =>
            {
                var h = await dispatcher.DispatchAsync(1, hidden, routing, CancellationToken.None);
                await dispatcher.CombineAsync(h, outputRows, CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(60));
            });
            output.WriteLine($"failed after {sw.ElapsedMilliseconds} ms: {ex.Message}");
            Assert.Equal(StatusCode.DeadlineExceeded, ex.Status);
            Assert.Equal("sleepy", ex.WorkerId);
            Assert.Contains("did not answer", ex.Message);
        }
        finally
        {
            worker.Signal(stop: false);
        }
    }
}
