using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// A client with the right credential cannot crash the worker nor take another client's session away: a flood of
/// Hello past the session table's size gets RESOURCE_EXHAUSTED while the session streaming over its shared ring keeps
/// working; many concurrent streams are all answered. (Resizing an attached ring: <see cref="SharedMemoryAimingTests"/>.)
/// </summary>
[Trait("Category", "Integration")]
public sealed class CrashAttemptTests : IClassFixture<SmallSessionTableWorker>
{
    private readonly SmallSessionTableWorker _worker;

    public CrashAttemptTests(SmallSessionTableWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _worker.Log.Output = output;
    }

    // One request over the session's stream with its rows in the ring at `offset`; returns the reply rows.
    internal static async Task<byte[]> RoundTripAsync(AsyncDuplexStreamingCall<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> call, SharedRing ring,
        ExpertRequest header, byte[] payload, ulong offset)
    {
        Assert.True(ring.TryGetSpan(offset, (ulong)payload.Length, out var rows));
        payload.CopyTo(rows);
        header.SharedRows = new SharedRows { Offset = offset, Length = (ulong)payload.Length };
        await call.RequestStream.WriteAsync(new TensorFrame<ExpertRequest>(header, ReadOnlyMemory<byte>.Empty));
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        using var reply = call.ResponseStream.Current;
        Assert.Equal(header.RequestId, reply.Header.RequestId);
        Assert.Equal(0, reply.Header.Status.Code);
        Assert.True(ring.TryGetSpan(offset, (ulong)payload.Length, out var answer));
        return answer.ToArray();
    }

    [LinuxFact]
    public async Task HelloFlood_IsRefused_AndNeverEvictsASessionInUse()
    {
        const long Ring = 1 << 20;
        using var session = await _worker.AttachAsync(Ring);
        var (hello, fd, ring, call) = (session.Hello, session.Fd, session.Ring, session.Call);
        var (h, p) = _worker.Valid(id: 1);
        var before = await RoundTripAsync(call, ring, h, p, 0);

        int linesBefore = _worker.Lines.Count;
        var flood = await Task.WhenAll(Enumerable.Range(0, 5 * SmallSessionTableWorker.Sessions).Select(async _ =>
        {
            try
            {
                await _worker.HelloAsync(ringBytes: Ring);
                return StatusCode.OK;
            }
            catch (RpcException ex)
            {
                return ex.StatusCode;
            }
        }));
        Assert.All(flood, c => Assert.True(c is StatusCode.OK or StatusCode.ResourceExhausted, c.ToString()));
        Assert.True(flood.Count(c => c == StatusCode.OK) <= SmallSessionTableWorker.Sessions - 1);
        Assert.True(flood.Count(c => c == StatusCode.ResourceExhausted) >= 4 * SmallSessionTableWorker.Sessions);
        Assert.True(_worker.RefusalLines("SessionsExhausted", linesBefore) <= 2, "one line per 10 s, not one per refusal");

        // The streaming session survived the flood: same rows, same answer, through its ring.
        h.RequestId = 2;
        Assert.Equal(before, await RoundTripAsync(call, ring, h, p, 65536));
        await call.RequestStream.CompleteAsync();
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }

    [Fact]
    public async Task ManyConcurrentStreams_AreAllAnswered()
    {
        var expected = await _worker.AssertAliveAsync();
        var invoker = _worker.Channel.CreateCallInvoker();
        await Task.WhenAll(Enumerable.Range(0, 24).Select(async s =>
        {
            using var call = invoker.AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(_worker.Headers(), DateTime.UtcNow.AddSeconds(60)));
            var reader = Task.Run(async () =>
            {
                int n = 0;
                while (await call.ResponseStream.MoveNext(CancellationToken.None))
                {
                    using var reply = call.ResponseStream.Current;
                    Assert.Equal(0, reply.Header.Status.Code);
                    Assert.Equal(expected, reply.Payload.ToArray());
                    n++;
                }
                return n;
            });
            for (ulong i = 0; i < 10; i++)
            {
                var (h, p) = _worker.Valid(id: i);
                await call.RequestStream.WriteAsync(new TensorFrame<ExpertRequest>(h, p));
            }
            await call.RequestStream.CompleteAsync();
            Assert.Equal(10, await reader);
        }));
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }
}
