using System.Buffers.Binary;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Distributed.Tests.Shared;

namespace Distributed.Protocol.Tests.Wire;

/// <summary>
/// The ring doorbell's queues and endpoints, over one ring mapped twice in this process (as the coordinator and the
/// worker map it): order and wrap-around, back-pressure, the futex sleep and wake-up, and every way a peer can break
/// the slot protocol (impossible length, unparsable header, rewriting a slot after it was taken, wrong sequence).
/// </summary>
[Trait("Category", "Unit")]
public sealed class RingDoorbellTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private readonly SharedRing _coordinator;
    private readonly SharedRing _worker;

    public RingDoorbellTests()
    {
        _coordinator = SharedRing.CreateSealed(RingControl.MinRingBytes);
        RingControl.Initialize(_coordinator);
        _worker = SharedRing.MapReceived(_coordinator.Descriptor!, (ulong)RingControl.MinRingBytes, RingControl.MinRingBytes);
    }

    public void Dispose()
    {
        _worker.Dispose();
        _coordinator.Dispose();
    }

    private static ExpertRequest Request(ulong id, int segments = 1)
    {
        var request = new ExpertRequest { RequestId = id, Layer = 1, Rows = (uint)segments, HiddenSize = 8, Dtype = WireDType.Fp32 };
        for (int i = 0; i < segments; i++)
        {
            request.Segments.Add(new ExpertSegment { Expert = (uint)i, Rows = 1 });
        }
        return request;
    }

    // The bytes of slot `slot` of the request queue, as the peer sees them.
    private Span<byte> RequestSlot(SharedRing ring, int slot)
    {
        Assert.True(ring.TryGetSpan((ulong)(RingControl.RequestQueueOffset + RingControl.HeaderBytes + ((long)slot * RingControl.SlotBytes)), RingControl.SlotBytes, out var span));
        return span;
    }

    [LinuxFact]
    public void Queue_CarriesMessagesInOrder_ThroughSeveralWrapArounds()
    {
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var buffer = new byte[RingControl.MaxMessageBytes];
        Assert.Equal(-1, consumer.TryRead(buffer));
        for (ulong id = 1; id <= 3 * RingControl.Slots + 5; id++)
        {
            Assert.True(producer.TryWrite(Request(id, (int)(id % 7) + 1)));
            producer.Ring();
            int n = consumer.TryRead(buffer);
            Assert.True(n > 0);
            var got = ExpertRequest.Parser.ParseFrom(buffer.AsSpan(0, n));
            Assert.Equal(Request(id, (int)(id % 7) + 1), got);
            Assert.Equal(-1, consumer.TryRead(buffer));
        }
    }

    [LinuxFact]
    public void Queue_Full_RefusesTheWrite_UntilTheConsumerGivesASlotBack()
    {
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        for (ulong id = 0; id < RingControl.Slots; id++)
        {
            Assert.True(producer.TryWrite(Request(id)));
        }
        Assert.False(producer.TryWrite(Request(99)));
        var buffer = new byte[RingControl.MaxMessageBytes];
        Assert.True(consumer.TryRead(buffer) > 0);
        Assert.True(producer.TryWrite(Request(99)));
    }

    [LinuxFact]
    public void TryWrite_RefusesAHeaderLongerThanASlot_AndWritesNothing()
    {
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var big = Request(1, segments: 600);
        Assert.True(big.CalculateSize() > RingControl.MaxMessageBytes);
        Assert.False(producer.TryWrite(big));
        Assert.False(consumer.HasMessage);
        Assert.True(producer.TryWrite(Request(2)));
        Assert.True(consumer.HasMessage);
    }

    [LinuxTheory]
    [InlineData(RingControl.MaxMessageBytes + 1)]
    [InlineData(int.MaxValue)]
    [InlineData(-1)]
    public void TryRead_SlotAnnouncingALengthNoSlotHolds_IsAProtocolBreak(int length)
    {
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var slot = RequestSlot(_coordinator, 0);
        BinaryPrimitives.WriteInt32LittleEndian(slot[8..], length);
        BinaryPrimitives.WriteInt64LittleEndian(slot, 1);
        var ex = Assert.Throws<RingProtocolException>(() => consumer.TryRead(new byte[RingControl.MaxMessageBytes]));
        Assert.Contains("announces", ex.Message, StringComparison.Ordinal);
    }

    [LinuxTheory]
    [InlineData(0L)]
    [InlineData(2L)]
    [InlineData(RingControl.Slots + 1L)]
    [InlineData(long.MaxValue)]
    public void TryRead_SlotWithAnotherSequence_IsNotTaken(long sequence)
    {
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var slot = RequestSlot(_coordinator, 0);
        BinaryPrimitives.WriteInt32LittleEndian(slot[8..], 4);
        BinaryPrimitives.WriteInt64LittleEndian(slot, sequence);
        Assert.False(consumer.HasMessage);
        Assert.Equal(-1, consumer.TryRead(new byte[RingControl.MaxMessageBytes]));
    }

    [LinuxFact]
    public void TryRead_CopiesTheMessageOut_ARewriteAfterwardsChangesNothingTaken()
    {
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        Assert.True(producer.TryWrite(Request(5)));
        var buffer = new byte[RingControl.MaxMessageBytes];
        int n = consumer.TryRead(buffer);
        RequestSlot(_coordinator, 0)[RingControl.SlotHeaderBytes..].Fill(0xFF);
        Assert.Equal(Request(5), ExpertRequest.Parser.ParseFrom(buffer.AsSpan(0, n)));
        // The slot was given back (sequence 0 + Slots): the producer's 65th message may use it.
        Assert.Equal(RingControl.Slots, BinaryPrimitives.ReadInt64LittleEndian(RequestSlot(_coordinator, 0)));
    }

    [LinuxFact]
    public void Wait_SleepsOnTheFutex_UntilTheProducerRings()
    {
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var waiter = new Thread(() => consumer.Wait(spinTicks: 0));
        waiter.Start();
        // The consumer marks itself asleep before it sleeps; only then is the wake-up path what is tested.
        Assert.True(SpinWait.SpinUntil(() => AsleepWord(_coordinator) != 0, Patience), "the consumer never went to sleep");
        Assert.True(producer.TryWrite(Request(1)));
        producer.Ring();
        Assert.True(waiter.Join(Patience), "the rung consumer did not wake");
        Assert.True(consumer.HasMessage);
        Assert.Equal(0u, AsleepWord(_coordinator));
    }

    [LinuxFact]
    public void Close_WakesASleepingConsumer_AndLaterWaitsReturnAtOnce()
    {
        using var consumer = new RingQueue(_worker, RingControl.RequestQueueOffset);
        var waiter = new Thread(() => consumer.Wait(spinTicks: 0));
        waiter.Start();
        Assert.True(SpinWait.SpinUntil(() => AsleepWord(_coordinator) != 0, Patience), "the consumer never went to sleep");
        consumer.Close();
        Assert.True(waiter.Join(Patience), "Close did not wake the consumer");
        consumer.Wait(long.MaxValue);
        Assert.True(consumer.IsClosed);
    }

    private static uint AsleepWord(SharedRing ring)
    {
        Assert.True(ring.TryGetSpan((ulong)RingControl.RequestQueueOffset + 64, 4, out var word));
        return Volatile.Read(ref System.Runtime.InteropServices.MemoryMarshal.AsRef<uint>(word));
    }

    [LinuxFact]
    public void Initialize_RefusesARingWithoutRoomForTheDoorbell()
    {
        using var small = SharedRing.CreateSealed(RingControl.MinRingBytes - 4096);
        Assert.Throws<ArgumentException>(() => RingControl.Initialize(small));
        Assert.Throws<SharedRingException>(() => new RingQueue(small, RingControl.RequestQueueOffset));
        Assert.Throws<SharedRingException>(() => new RingQueue(_worker, 12345));
    }

    [LinuxFact]
    public void Endpoints_CoordinatorAndWorker_ExchangeRequestsAndReplies()
    {
        using var replies = new System.Collections.Concurrent.BlockingCollection<ExpertReply>();
        // The callbacks run on the reader threads and must not throw: what goes wrong there is collected and asserted here.
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        RingDoorbellEndpoint<ExpertReply, ExpertRequest>? worker = null;
        worker = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(_worker, coordinator: false, ExpertRequest.Parser, TimeSpan.Zero, request =>
            {
                if (!worker!.TrySend(new ExpertReply { RequestId = request.RequestId, Rows = request.Rows, SharedRows = request.SharedRows }))
                {
                    errors.Enqueue($"reply to {request.RequestId} not sent");
                }
            }, ex => errors.Enqueue(ex.Message), "test-worker");
        using var w = worker;
        worker.Start();
        using var coordinator = new RingDoorbellEndpoint<ExpertRequest, ExpertReply>(_coordinator, coordinator: true, ExpertReply.Parser, TimeSpan.FromMicroseconds(20),
            replies.Add, ex => errors.Enqueue(ex.Message), "test-coordinator");
        coordinator.Start();
        for (ulong id = 1; id <= 2 * RingControl.Slots; id++)
        {
            var request = Request(id);
            request.SharedRows = new SharedRows { Offset = (ulong)RingControl.ControlBytes, Length = 32 };
            Assert.True(coordinator.TrySend(request));
            Assert.True(replies.TryTake(out var reply, Patience), $"no reply to request {id}");
            Assert.Equal(id, reply.RequestId);
            Assert.Equal(request.SharedRows, reply.SharedRows);
        }
        Assert.Empty(errors);
    }

    [LinuxFact]
    public void Endpoints_TenThousandRoundTripsWithoutSpinning_NeverMissAWakeUp()
    {
        // Both readers sleep at once (spin 0), so every message goes through the asleep-flag / futex hand-off; a lost
        // wake-up would only be rescued by the 250 ms backstop, which the endpoints count.
        using var replies = new System.Collections.Concurrent.BlockingCollection<ExpertReply>();
        RingDoorbellEndpoint<ExpertReply, ExpertRequest>? worker = null;
        worker = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(_worker, coordinator: false, ExpertRequest.Parser, TimeSpan.Zero,
            request => worker!.TrySend(new ExpertReply { RequestId = request.RequestId }), _ => { }, "test-worker");
        using var w = worker;
        worker.Start();
        using var coordinator = new RingDoorbellEndpoint<ExpertRequest, ExpertReply>(_coordinator, coordinator: true, ExpertReply.Parser, TimeSpan.Zero,
            replies.Add, _ => { }, "test-coordinator");
        coordinator.Start();
        for (ulong id = 1; id <= 10_000; id++)
        {
            Assert.True(coordinator.TrySend(Request(id)));
            Assert.True(replies.TryTake(out var reply, Patience), $"no reply to request {id}");
            Assert.Equal(id, reply.RequestId);
        }
        Assert.Equal((0L, 0L), (coordinator.MissedWakeUps, worker.MissedWakeUps));
    }

    [LinuxFact]
    public void Endpoint_UnparsableSlot_IsReportedOnce_AndNothingIsReceivedAfterIt()
    {
        var failures = new System.Collections.Concurrent.ConcurrentQueue<RingProtocolException>();
        var received = new System.Collections.Concurrent.ConcurrentQueue<ExpertRequest>();
        using var failed = new ManualResetEventSlim();
        using var worker = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(_worker, coordinator: false, ExpertRequest.Parser, TimeSpan.Zero,
            received.Enqueue, ex =>
            {
                failures.Enqueue(ex);
                failed.Set();
            }, "test-worker");
        worker.Start();
        using var producer = new RingQueue(_coordinator, RingControl.RequestQueueOffset);
        Assert.True(producer.TryWrite(Request(1)));
        producer.Ring();
        Assert.True(SpinWait.SpinUntil(() => !received.IsEmpty, Patience));
        // Slot 1: a published message of 3 bytes that is no protobuf (a field tag of wire type 7).
        var slot = RequestSlot(_coordinator, 1);
        slot[RingControl.SlotHeaderBytes..][..3].Fill(0xFF);
        BinaryPrimitives.WriteInt32LittleEndian(slot[8..], 3);
        BinaryPrimitives.WriteInt64LittleEndian(slot, 2);
        producer.Ring();
        Assert.True(failed.Wait(Patience), "the broken slot was not reported");
        // The producer's private index still points at slot 1; a valid message written into slot 2 is never read.
        BinaryPrimitives.WriteInt64LittleEndian(RequestSlot(_coordinator, 2), 3);
        worker.StopReceiving();
        Assert.Single(received);
        Assert.Single(failures);
        Assert.Contains("no valid ExpertRequest", failures.Single().Message, StringComparison.Ordinal);
    }
}
