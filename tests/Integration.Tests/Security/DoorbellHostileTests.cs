using System.Diagnostics;
using Distributed.Checkpoint;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Moe;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// The ring doorbell between hostile peers. A coordinator writing into the request queue by hand gets every request
/// validated as a stream frame is (rows outside the ring, inside the control area, non-finite: refused per request,
/// answered through the reply queue, bitwise the inline answer when valid), and a slot that breaks the protocol ends
/// its stream with INVALID_ARGUMENT while the worker keeps serving. A worker that never rings back runs into the
/// dispatch deadline and is suspected; one that publishes garbage or names another region fails the layer with
/// DATA_LOSS; one that dies is noticed through its stream at once, long before the deadline.
/// </summary>
[Trait("Category", "Integration")]
public sealed class DoorbellHostileTests : IClassFixture<HostileWorker>
{
    private const long RingBytes = 2 << 20;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private readonly HostileWorker _worker;
    private readonly ITestOutputHelper _output;

    public DoorbellHostileTests(HostileWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _output = output;
        _worker.Log.Output = output;
    }

    private static ulong RowsAt => (ulong)RingControl.ControlBytes;

    // Publishes `header` (rows already in the ring) into the request queue and waits for the next reply slot.
    private static async Task<ExpertReply> BellAsync(RingQueue requests, RingQueue replies, ExpertRequest header)
    {
        Assert.True(requests.TryWrite(header));
        requests.Ring();
        return await Task.Run(() =>
        {
            var buffer = new byte[RingControl.MaxMessageBytes];
            var deadline = Stopwatch.GetTimestamp() + (long)(Patience.TotalSeconds * Stopwatch.Frequency);
            while (Stopwatch.GetTimestamp() < deadline)
            {
                int n = replies.TryRead(buffer);
                if (n >= 0)
                {
                    return ExpertReply.Parser.ParseFrom(buffer.AsSpan(0, n));
                }
                replies.Wait(spinTicks: 0);
            }
            throw new TimeoutException("no reply slot");
        });
    }

    private static ExpertRequest WithRows(ExpertRequest header, SharedRing ring, byte[] payload, ulong offset)
    {
        if (ring.TryGetSpan(offset, (ulong)payload.Length, out var rows))
        {
            payload.CopyTo(rows);
        }
        header.SharedRows = new SharedRows { Offset = offset, Length = (ulong)payload.Length };
        return header;
    }

    [LinuxFact]
    public async Task HostileCoordinator_EveryDoorbellRequestIsValidated_AndValidOnesAreAnsweredBitwiseThroughTheRing()
    {
        var inline = await _worker.AssertAliveAsync();
        using var session = await _worker.AttachAsync(RingBytes, doorbell: true);
        using var requests = new RingQueue(session.Ring, RingControl.RequestQueueOffset);
        using var replies = new RingQueue(session.Ring, RingControl.ReplyQueueOffset);
        var (h, p) = _worker.Valid(id: 1);

        var ok = await BellAsync(requests, replies, WithRows(h, session.Ring, p, RowsAt));
        Assert.Equal((1UL, 0), (ok.RequestId, ok.Status.Code));
        Assert.Equal(h.SharedRows, ok.SharedRows);
        Assert.True(session.Ring.TryGetSpan(RowsAt, (ulong)p.Length, out var answer));
        Assert.Equal(inline, answer.ToArray());

        // Rows past the sealed end, straddling it, inside the doorbell's own control area, then a non-finite row.
        var cases = new (ulong Offset, string Expect)[]
        {
            ((ulong)RingBytes, "outside"), ((ulong)RingBytes - 64, "outside"), (0, "control area"), ((ulong)RingControl.ReplyQueueOffset, "control area"),
        };
        ulong id = 10;
        foreach (var (offset, expect) in cases)
        {
            var (bad, badPayload) = _worker.Valid(id: ++id);
            bad.SharedRows = new SharedRows { Offset = offset, Length = (ulong)badPayload.Length };
            var refused = await BellAsync(requests, replies, bad);
            Assert.Equal(id, refused.RequestId);
            Assert.Equal((int)StatusCode.InvalidArgument, refused.Status.Code);
            Assert.Contains(refused.Status.Violations, v => v.Field == "shared_rows" && v.Description.Contains(expect, StringComparison.Ordinal));
        }
        var (nan, nanPayload) = _worker.Valid(id: ++id);
        BitConverter.TryWriteBytes(nanPayload.AsSpan(12), float.NaN);
        var nonFinite = await BellAsync(requests, replies, WithRows(nan, session.Ring, nanPayload, RowsAt));
        Assert.Equal((int)StatusCode.InvalidArgument, nonFinite.Status.Code);
        // Inline rows cannot ride the doorbell: the payload is not there.
        var (noRows, _) = _worker.Valid(id: ++id);
        var missing = await BellAsync(requests, replies, noRows);
        Assert.NotEqual(0, missing.Status.Code);

        // The session still works after every refusal.
        h.RequestId = ++id;
        var again = await BellAsync(requests, replies, WithRows(h, session.Ring, p, RowsAt + 4096));
        Assert.Equal(0, again.Status.Code);
        Assert.True(session.Ring.TryGetSpan(RowsAt + 4096, (ulong)p.Length, out answer));
        Assert.Equal(inline, answer.ToArray());
        await session.Call.RequestStream.CompleteAsync();
        _worker.AssertNoStackTraces();
    }

    [LinuxFact]
    public async Task StreamEnd_StopsTheSessionsDoorbell_AndTheNextStreamOfTheSessionRunsItAgain()
    {
        using var session = await _worker.AttachAsync(RingBytes, doorbell: true);
        using var requests = new RingQueue(session.Ring, RingControl.RequestQueueOffset);
        using var replies = new RingQueue(session.Ring, RingControl.ReplyQueueOffset);
        var (h, p) = _worker.Valid(id: 1);
        Assert.Equal(0, (await BellAsync(requests, replies, WithRows(h, session.Ring, p, RowsAt))).Status.Code);

        // The stream ends (as when the coordinator goes away): the worker's handler returns only after its doorbell
        // reader stopped and gave the doorbell back, so the response stream's end is the event to wait for.
        await session.Call.RequestStream.CompleteAsync();
        Assert.False(await session.Call.ResponseStream.MoveNext(CancellationToken.None));
        using var second = _worker.Channel.CreateCallInvoker().AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null,
            new CallOptions(_worker.Headers(session: session.Hello.SessionId)));
        h.RequestId = 2;
        var reply = await BellAsync(requests, replies, WithRows(h, session.Ring, p, RowsAt));
        Assert.Equal((2UL, 0), (reply.RequestId, reply.Status.Code));
        await second.RequestStream.CompleteAsync();
        Assert.False(await second.ResponseStream.MoveNext(CancellationToken.None));
        _worker.AssertNoStackTraces();
    }

    public static TheoryData<string> BrokenSlots => new() { "unparsable", "impossible length" };

    [LinuxTheory]
    [MemberData(nameof(BrokenSlots))]
    public async Task HostileCoordinator_BrokenSlot_EndsItsStreamWithInvalidArgument_AndTheWorkerServesOn(string how)
    {
        using var session = await _worker.AttachAsync(RingBytes, doorbell: true);
        Assert.True(session.Ring.TryGetSpan((ulong)(RingControl.RequestQueueOffset + RingControl.HeaderBytes), RingControl.SlotBytes, out var slot));
        slot[RingControl.SlotHeaderBytes..][..8].Fill(0xFF);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(slot[8..], how == "unparsable" ? 8 : RingControl.SlotBytes);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(slot, 1);
        using (var bell = new RingQueue(session.Ring, RingControl.RequestQueueOffset))
        {
            bell.Ring();
        }
        var ex = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var cts = new CancellationTokenSource(Patience);
            while (await session.Call.ResponseStream.MoveNext(cts.Token))
            {
            }
        });
        Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
        // (The refusal's log line is rate-limited per kind, so the reason is checked in the status the stream ended with.)
        Assert.Contains("malformed doorbell request", ex.Status.Detail, StringComparison.Ordinal);
        await _worker.AssertAliveAsync();
        // A new session gets a working doorbell.
        using var fresh = await _worker.AttachAsync(RingBytes, doorbell: true);
        using var requests = new RingQueue(fresh.Ring, RingControl.RequestQueueOffset);
        using var replies = new RingQueue(fresh.Ring, RingControl.ReplyQueueOffset);
        var (h, p) = _worker.Valid(id: 3);
        Assert.Equal(0, (await BellAsync(requests, replies, WithRows(h, fresh.Ring, p, RowsAt))).Status.Code);
        await fresh.Call.RequestStream.CompleteAsync();
        _worker.AssertNoStackTraces();
    }

    private static (DistributionOptions Options, RoutingResult Routing, float[] Hidden) Layer(ModelDescriptor model, int tokens, TimeSpan deadline)
    {
        var options = new DistributionOptions { WireDType = WireDType.Fp32, DispatchTimeout = deadline, MaxDispatchAttempts = 1, SharedRingBytes = RingBytes };
        var routing = new RoutingResult(Enumerable.Range(0, tokens).Select(t => t % model.NumExperts).ToArray(), Enumerable.Repeat(0.5f, tokens).ToArray(), 1);
        var hidden = new float[tokens * model.HiddenSize];
        for (int i = 0; i < hidden.Length; i++)
        {
            hidden[i] = (i % 13) / 13f - 0.5f;
        }
        return (options, routing, hidden);
    }

    [LinuxTheory]
    [InlineData(DoorbellImpostor.Misbehaviour.Silent, StatusCode.DeadlineExceeded, "did not answer")]
    [InlineData(DoorbellImpostor.Misbehaviour.Garbage, StatusCode.DataLoss, "broke the ring doorbell")]
    [InlineData(DoorbellImpostor.Misbehaviour.ImpossibleLength, StatusCode.DataLoss, "broke the ring doorbell")]
    [InlineData(DoorbellImpostor.Misbehaviour.WrongRegion, StatusCode.DataLoss, "another shared region")]
    public async Task HostileWorker_OnTheDoorbell_FailsTheLayerClearly_AndNeverTheCoordinator(DoorbellImpostor.Misbehaviour how, StatusCode expected, string says)
    {
        var log = new TestLog { Output = _output };
        using var loggerFactory = log.CreateLoggerFactory();
        var model = _worker.Model;
        await using var impostor = await DoorbellImpostor.StartAsync(model, how);
        var (options, routing, hidden) = Layer(model, 4, TimeSpan.FromSeconds(2));
        await using var pool = new WorkerChannelPool(model, options, loggerFactory.CreateLogger<WorkerChannelPool>());
        var endpoint = new WorkerEndpoint("impostor", impostor.Address);
        var connection = await pool.GetAsync(endpoint, CancellationToken.None);
        Assert.True(connection.UsesDoorbell);
        var table = ExpertPlacementTable.FromHandshakes(model, [(endpoint, connection.Hello)]);
        var dispatcher = new GrpcExpertDispatcher(new StaticPlacementSource(table), pool);
        int layer = model.MoeLayers[0];
        var started = Stopwatch.GetTimestamp();
        var handle = await dispatcher.DispatchAsync(layer, hidden, routing, CancellationToken.None);
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(async () =>
            await dispatcher.CombineAsync(handle, new float[hidden.Length], CancellationToken.None));
        _output.WriteLine($"{how}: {ex.Status} after {Stopwatch.GetElapsedTime(started).TotalMilliseconds:F0} ms: {ex.Message}");
        Assert.Equal(expected, ex.Status);
        Assert.Contains(says, ex.Message, StringComparison.Ordinal);
        Assert.True(connection.DoorbellRequests >= 1 && impostor.RequestsSeen >= 1, "the request did not go through the doorbell");
        if (how == DoorbellImpostor.Misbehaviour.Silent)
        {
            Assert.True(dispatcher.Suspicion.IsSuspect(table, 0), "the silent worker is not suspected");
        }
    }

    [LinuxFact]
    public async Task WorkerDeath_IsNoticedThroughItsStream_LongBeforeTheDispatchDeadline()
    {
        var log = new TestLog { Output = _output };
        using var loggerFactory = log.CreateLoggerFactory();
        string fixture = TestPaths.Fixture("tiny-maverick");
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(fixture))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(), ["--model", fixture, "--experts", "all", "--threads", "1", "--worker-id", "doomed"], "doomed", log.Write);
        await using var _ = worker;
        string address = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        var (options, routing, hidden) = Layer(model, 4, TimeSpan.FromSeconds(60));
        await using var pool = new WorkerChannelPool(model, options, loggerFactory.CreateLogger<WorkerChannelPool>());
        var endpoint = new WorkerEndpoint("doomed", address);
        var connection = await pool.GetAsync(endpoint, CancellationToken.None);
        Assert.True(connection.UsesDoorbell);
        var dispatcher = new GrpcExpertDispatcher(new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(model, [(endpoint, connection.Hello)])), pool);
        int layer = model.MoeLayers[0];
        var handle = await dispatcher.DispatchAsync(layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, new float[hidden.Length], CancellationToken.None);
        Assert.True(connection.DoorbellRequests >= 1);

        // The next layer goes out at once: its request either finds the stream already broken or sits in the ring until
        // the stream's end fails it; either way long before the 60 s deadline.
        worker.Kill();
        var started = Stopwatch.GetTimestamp();
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(async () =>
        {
            var h = await dispatcher.DispatchAsync(layer, hidden, routing, CancellationToken.None);
            await dispatcher.CombineAsync(h, new float[hidden.Length], CancellationToken.None);
        });
        var took = Stopwatch.GetElapsedTime(started);
        _output.WriteLine($"after the kill: {ex.Status} in {took.TotalMilliseconds:F0} ms: {ex.Message}");
        Assert.Equal(StatusCode.Unavailable, ex.Status);
        Assert.True(took < options.DispatchTimeout / 2, $"the loss took {took}");
    }
}
