using System.Security.Cryptography;
using Distributed.ExpertWorker.Services;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Distributed.Tests.Shared;
using Microsoft.Extensions.Time.Testing;

namespace Distributed.ExpertWorker.Tests.Services;

/// <summary>
/// Sessions are bounded without ever closing one in use: when full, only an idle session past its grace is evicted
/// (least recently used first); otherwise the new session is refused. A ring attaches once, with the right nonce, in time.
/// </summary>
[Trait("Category", "Unit")]
public sealed class SessionRegistryTests
{
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(30);
    private readonly FakeTimeProvider _time = new();

    private WorkerSession Session(string id, byte[]? nonce = null, long ringBytes = 0)
        => new(id.PadLeft(32, '0'), "c-" + id, nonce is null ? RowTransport.Inline : RowTransport.SharedMemoryFd, _time, nonce, ringBytes, TimeSpan.FromSeconds(30));

    [Fact]
    public void Full_RefusesNewSessions_UntilAnIdleOnePassedItsGrace_ThenEvictsTheLeastRecentlyUsed()
    {
        using var registry = new SessionRegistry(3, Grace, _time);
        var a = Session("a");
        var b = Session("b");
        var c = Session("c");
        Assert.True(registry.TryAdd(a, out _));
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(registry.TryAdd(b, out _));
        Assert.True(registry.TryAdd(c, out _));
        Assert.False(registry.TryAdd(Session("d"), out var none));
        Assert.Null(none);
        Assert.Equal(3, registry.Count);

        // a is used again later than b: b becomes the least recently used.
        _time.Advance(TimeSpan.FromSeconds(5));
        Assert.True(a.TryEnter());
        a.Exit();
        _time.Advance(Grace);
        var d = Session("d");
        Assert.True(registry.TryAdd(d, out var evicted));
        Assert.Same(b, evicted);
        Assert.True(b.IsClosed);
        Assert.False(b.TryEnter());
        Assert.False(registry.TryGet(b.Id, out _));
        Assert.True(registry.TryGet(a.Id, out _));
    }

    [Fact]
    public void SessionInUse_IsNeverEvicted_HoweverOld()
    {
        using var registry = new SessionRegistry(2, Grace, _time);
        var streaming = Session("s");
        var other = Session("o");
        Assert.True(registry.TryAdd(streaming, out _));
        Assert.True(registry.TryAdd(other, out _));
        Assert.True(streaming.TryEnter());
        Assert.True(other.TryEnter());
        _time.Advance(TimeSpan.FromHours(10));
        for (int i = 0; i < 100; i++)
        {
            Assert.False(registry.TryAdd(Session("f" + i), out _));
        }
        Assert.False(streaming.TryClose());
        other.Exit();
        _time.Advance(Grace);
        Assert.True(registry.TryAdd(Session("n"), out var evicted));
        Assert.Same(other, evicted);
        Assert.False(streaming.IsClosed);
        Assert.True(registry.TryGet(streaming.Id, out _));
        streaming.Exit();
    }

    [LinuxFact]
    public async Task Ring_AttachesOnceWithTheRightNonce_InTime_AndOutlivesItsSessionWhileHeld()
    {
        using var registry = new SessionRegistry(8, Grace, _time);
        var nonce = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
        var session = Session("1", nonce, 1 << 16);
        var inline = Session("2");
        Assert.True(registry.TryAdd(session, out _));
        Assert.True(registry.TryAdd(inline, out _));
        await using var listener = RingRendezvousListener.Start(Path.GetTempPath(), r => registry.AttachRing(r, 1 << 20), _ => { });
        using var ring = SharedRing.CreateSealed(1 << 16);
        var timeout = TimeSpan.FromSeconds(10);

        async Task<string> Refused(string id, byte[] n)
            => (await Assert.ThrowsAsync<SharedRingException>(() => RingRendezvous.AttachAsync(listener.SocketPath, id, n, ring, timeout, CancellationToken.None))).Message;

        Assert.Contains("unknown session", await Refused(new string('f', 32), nonce));
        Assert.Contains("did not negotiate", await Refused(inline.Id, nonce));
        Assert.Contains("wrong rendezvous nonce", await Refused(session.Id, new byte[RingRendezvous.NonceBytes]));
        Assert.Contains("already used", await Refused(session.Id, nonce));
        Assert.Null(session.Ring);

        var fresh = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
        var late = Session("3", fresh, 1 << 16);
        Assert.True(registry.TryAdd(late, out _));
        _time.Advance(TimeSpan.FromSeconds(31));
        Assert.Contains("expired", await Refused(late.Id, fresh));

        var good = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
        var attached = Session("4", good, 1 << 16);
        Assert.True(registry.TryAdd(attached, out _));
        await RingRendezvous.AttachAsync(listener.SocketPath, attached.Id, good, ring, timeout, CancellationToken.None);
        var mapped = attached.Ring;
        Assert.NotNull(mapped);
        Assert.True(ring.TryGetSpan(0, 4, out var mine));
        mine.Fill(9);

        // A request holds the ring; the session goes away; the memory stays mapped until the request lets go.
        Assert.True(mapped!.TryAcquire());
        Assert.True(attached.TryClose());
        Assert.False(mapped.TryAcquire());
        Assert.True(mapped.TryGetSpan(0, 4, out var theirs));
        Assert.Equal(9, theirs[3]);
        mapped.Release();
        Assert.False(mapped.TryGetSpan(0, 4, out _));
    }

    [Fact]
    public void Doorbell_OnlyWithARingLargeEnough_ItsRowsStartAfterTheControlArea_AndOneStreamClaimsIt()
    {
        var nonce = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
        var session = new WorkerSession("1".PadLeft(32, '0'), "c", RowTransport.SharedMemoryFd, _time, nonce, RingControl.MinRingBytes,
            TimeSpan.FromSeconds(30), doorbell: true);
        Assert.True(session.Doorbell);
        Assert.Equal((ulong)RingControl.ControlBytes, session.RowsStart);
        Assert.True(session.TryClaimDoorbell(out var positions));
        Assert.Equal((0L, 0L), positions);
        Assert.False(session.TryClaimDoorbell(out _));
        // The next stream goes on where the previous one left the queues.
        session.ReleaseDoorbell((3, 5));
        Assert.True(session.TryClaimDoorbell(out positions));
        Assert.Equal((3L, 5L), positions);

        // Too small a ring, no ring at all, or not asked for: no doorbell, rows anywhere.
        var small = new WorkerSession("2".PadLeft(32, '0'), "c", RowTransport.SharedMemoryFd, _time, nonce, RingControl.MinRingBytes - 1,
            TimeSpan.FromSeconds(30), doorbell: true);
        var inline = new WorkerSession("3".PadLeft(32, '0'), "c", RowTransport.Inline, _time, doorbell: true);
        var plain = Session("4", nonce, RingControl.MinRingBytes);
        foreach (var s in new[] { small, inline, plain })
        {
            Assert.False(s.Doorbell);
            Assert.Equal(0UL, s.RowsStart);
            Assert.False(s.TryClaimDoorbell(out _));
        }
    }
}
