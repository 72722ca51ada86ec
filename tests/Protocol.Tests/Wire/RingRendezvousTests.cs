using System.Text;
using Distributed.Protocol.Wire;
using Distributed.Tests.Shared;

namespace Distributed.Protocol.Tests.Wire;

/// <summary>The descriptor hand-over: a ring reaches the listener's owner as a descriptor with the peer's credentials,
/// refusals come back with their reason, and malformed messages never reach the owner.</summary>
[Trait("Category", "Unit")]
public sealed class RingRendezvousTests
{
    private const string Session = "0123456789abcdef0123456789abcdef";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [LinuxFact]
    public async Task Attach_HandsTheMemfdAndPeerToTheOwner_WhoMapsTheSameMemory()
    {
        SharedRing? attached = null;
        RingAttachRequest? seen = null;
        await using var listener = RingRendezvousListener.Start(Path.GetTempPath(), r =>
        {
            seen = r;
            attached = SharedRing.MapReceived(r.Descriptor, 1 << 16, 1 << 20);
            return null;
        }, _ => { });
        using var ring = SharedRing.CreateSealed(1 << 16);
        Assert.True(ring.TryGetSpan(10, 3, out var span));
        "abc"u8.CopyTo(span);
        var nonce = Enumerable.Range(0, RingRendezvous.NonceBytes).Select(i => (byte)i).ToArray();
        await RingRendezvous.AttachAsync(listener.SocketPath, Session, nonce, ring, Timeout, CancellationToken.None);
        Assert.NotNull(attached);
        using (attached)
        {
            Assert.Equal(Session, seen!.SessionId);
            Assert.Equal(nonce, seen.Nonce.ToArray());
            Assert.Equal(Environment.ProcessId, seen.PeerPid);
            Assert.Equal(UnixInterop.GetEffectiveUserId(), seen.PeerUid);
            Assert.True(attached!.TryGetSpan(10, 3, out var theirs));
            Assert.Equal("abc", Encoding.ASCII.GetString(theirs));
        }
    }

    [LinuxFact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task Listener_LivesInAFreshPrivateDirectory_RemovedOnDispose()
    {
        var listener = RingRendezvousListener.Start(Path.GetTempPath(), _ => null, _ => { });
        Assert.Equal(listener.DirectoryPath, Path.GetDirectoryName(listener.SocketPath));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(listener.DirectoryPath));
        Assert.True(File.Exists(listener.SocketPath));
        await listener.DisposeAsync();
        Assert.False(Directory.Exists(listener.DirectoryPath));
    }

    /// <summary>Directories of killed workers are removed; a live listener's and anything not named like ours stay.</summary>
    [LinuxFact]
    public async Task StaleDirectories_OfKilledWorkers_AreRemoved_LiveOnesKept()
    {
        string root = Directory.CreateTempSubdirectory("rendezvous-stale-").FullName;
        try
        {
            // A killed worker: its socket file remains, nobody listens; its pid is not running.
            string dead = Path.Combine(root, $"distributed-worker-{int.MaxValue}-0123456789abcdef");
            Directory.CreateDirectory(dead);
            using (var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Seqpacket, System.Net.Sockets.ProtocolType.Unspecified))
            {
                s.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(Path.Combine(dead, "ring.sock")));
            }
            string empty = Path.Combine(root, $"distributed-worker-{int.MaxValue - 1}-fedcba9876543210");
            Directory.CreateDirectory(empty);
            string foreign = Path.Combine(root, "distributed-worker-notours");
            Directory.CreateDirectory(foreign);
            await using var live = RingRendezvousListener.Start(root, _ => null, _ => { });

            Assert.Equal(0, RingRendezvousListener.RemoveStale(root, TimeSpan.FromHours(1)));
            Assert.Equal(2, RingRendezvousListener.RemoveStale(root, TimeSpan.Zero));
            Assert.False(Directory.Exists(dead));
            Assert.False(Directory.Exists(empty));
            Assert.True(Directory.Exists(foreign));
            Assert.True(File.Exists(live.SocketPath));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [LinuxFact]
    public async Task OwnersRefusal_ReachesTheClient()
    {
        await using var listener = RingRendezvousListener.Start(Path.GetTempPath(), _ => "unknown session", _ => { });
        using var ring = SharedRing.CreateSealed(1 << 16);
        var ex = await Assert.ThrowsAsync<SharedRingException>(() =>
            RingRendezvous.AttachAsync(listener.SocketPath, Session, new byte[32], ring, Timeout, CancellationToken.None));
        Assert.Contains("unknown session", ex.Message);
    }

    [LinuxTheory]
    [InlineData(0, true, "0 descriptors")]
    [InlineData(2, true, "2 descriptors")]
    [InlineData(1, false, "malformed message")]
    public async Task MalformedMessage_IsRefused_WithoutCallingTheOwner(int descriptors, bool wellFormed, string reason)
    {
        int calls = 0;
        var refusals = new List<string>();
        await using var listener = RingRendezvousListener.Start(Path.GetTempPath(), _ =>
        {
            Interlocked.Increment(ref calls);
            return null;
        }, r =>
        {
            lock (refusals)
            {
                refusals.Add(r);
            }
        });
        var rings = Enumerable.Range(0, descriptors).Select(_ => SharedRing.CreateSealed(1 << 16)).ToList();
        var request = new byte[RingRendezvous.RequestBytes];
        if (wellFormed)
        {
            "DRR1"u8.CopyTo(request);
            Encoding.ASCII.GetBytes(Session, request.AsSpan(4));
        }
        var (attached, why) = await RingRendezvous.ExchangeAsync(listener.SocketPath, request, [.. rings.Select(r => r.Descriptor!)], Timeout, CancellationToken.None);
        Assert.False(attached);
        Assert.Contains(reason, why);
        Assert.Equal(0, calls);
        lock (refusals)
        {
            Assert.Contains(refusals, r => r.Contains(reason, StringComparison.Ordinal));
        }
        rings.ForEach(r => r.Dispose());
    }
}
