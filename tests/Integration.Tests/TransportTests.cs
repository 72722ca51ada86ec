using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Checkpoint;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// The transports negotiated in the handshake: rows inline over TCP, rows in a shared-memory ring (a sealed memfd passed
/// to the worker by descriptor; the message carries an offset, or with the ring doorbell the header goes through the
/// ring's own slot queue), and gRPC over a Unix domain socket. Every combination gives the in-process logits bit for bit.
/// </summary>
[Trait("Category", "Integration")]
public sealed class TransportTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(false, false, false)]
    [InlineData(true, false, false)]
    [InlineData(true, false, true)]
    [InlineData(false, true, false)]
    [InlineData(true, true, true)]
    public async Task Transport_NegotiatedAndBitwiseIdentical(bool sharedMemory, bool unixSocket, bool doorbell)
    {
        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        string fixture = TestPaths.Fixture("tiny-maverick");
        string socket = Path.Combine(Path.GetTempPath(), $"expert-{Guid.NewGuid():N}.sock");
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", fixture, "--experts", "all", "--threads", "1", "--worker-id", "t", "--unix-socket", socket], "t", log.Write);
        string address = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(fixture))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        var options = new DistributionOptions { WireDType = WireDType.Fp32, PreferSharedMemory = sharedMemory, SharedRingBytes = 4 << 20, RingDoorbell = doorbell };
        await using var pool = new WorkerChannelPool(model, options, loggerFactory.CreateLogger<WorkerChannelPool>());
        var endpoint = new WorkerEndpoint("t", unixSocket ? "unix:" + socket : address);
        var connection = await pool.GetAsync(endpoint, CancellationToken.None);
        Assert.Equal(sharedMemory ? RowTransport.SharedMemoryFd : RowTransport.Inline, connection.Transport);
        Assert.Equal(doorbell, connection.UsesDoorbell);
        var dispatcher = new GrpcExpertDispatcher(new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(model, [(endpoint, connection.Hello)])), pool);
        using var engine = Llama4Engine.Load(fixture, new CpuKernelBackend(1), dispatcher);
        var golden = Golden.Load("tiny-maverick");
        var reference = await Reference.ForAsync("tiny-maverick");
        for (int i = 0; i < 2; i++)
        {
            var r = await engine.InferAsync(golden.Prompts[i].InputIds, golden.Prompts[i].NewTokens.Length, CancellationToken.None);
            Assert.True(Reference.BitwiseEqual(reference[i].LastLogits, r.LastLogits), $"prompt {i}");
            Assert.Equal(reference[i].NewTokens, r.NewTokens);
        }
        // Micro-batch ping-pong (issue #15): two dispatches in flight on the one connection (two leases of the ring at
        // once with shared memory), still bitwise the unsplit in-process steps.
        using var inProcess = Llama4Engine.Load(fixture, new CpuKernelBackend(1));
        var batch = BatchedSteps.Prompts(inProcess.Config.VocabSize, 6, seed: 4);
        var unsplit = await BatchedSteps.RunAsync(inProcess, batch, decodeSteps: 2, MicroBatching.Off);
        var pingPong = await BatchedSteps.RunAsync(engine, batch, decodeSteps: 2, MicroBatching.From(2));
        Assert.True(BatchedSteps.FirstDifference(unsplit, pingPong) is null, $"ping-pong: {BatchedSteps.FirstDifference(unsplit, pingPong)}");
        // With the doorbell every request fits a slot and the credit (2 dispatches in flight at most): none took the stream.
        Assert.Equal(doorbell, connection.DoorbellRequests > 0);
        output.WriteLine($"{connection.Transport} over {(unixSocket ? "unix socket" : "tcp")}, doorbell {connection.UsesDoorbell} ({connection.DoorbellRequests} requests): {dispatcher.Statistics}");
    }
}
