using System.Security.Cryptography;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Services;

/// <summary>
/// A handshake's outcome: the transport a coordinator's streams use and, on the same host, the shared ring it passes
/// afterwards over the rendezvous socket. A session is in use while a call holds it (<see cref="TryEnter"/> ..
/// <see cref="Exit"/>); a session in use is never closed by the registry, and its ring stays mapped while any request
/// holds a reference to it (<see cref="SharedRing.TryAcquire"/>).
/// </summary>
public sealed class WorkerSession : IDisposable
{
    private const int Closed = -1;

    private readonly TimeProvider _time;
    private readonly byte[]? _nonceHash;
    private readonly long _expectedRingBytes;
    private readonly long _rendezvousDeadline;
    private SharedRing? _ring;
    private int _users;
    private int _rendezvousUsed;
    private int _doorbellClaimed;
    private (long Send, long Receive) _doorbellPositions;
    private long _lastUsed;

    /// <summary>Creates a session; with <paramref name="ringNonce"/> a ring of <paramref name="expectedRingBytes"/>
    /// may be attached once, before <paramref name="rendezvousLifetime"/> has passed.</summary>
    /// <param name="doorbell">The session agreed to the ring doorbell (<see cref="RingControl"/>): its ring's first
    /// <see cref="RingControl.ControlBytes"/> are the doorbell's queues, never rows.</param>
    public WorkerSession(string id, string coordinatorId, RowTransport transport, TimeProvider time,
        ReadOnlySpan<byte> ringNonce = default, long expectedRingBytes = 0, TimeSpan rendezvousLifetime = default, bool doorbell = false)
    {
        Doorbell = doorbell && !ringNonce.IsEmpty && expectedRingBytes >= RingControl.MinRingBytes;
        ArgumentNullException.ThrowIfNull(time);
        Id = id;
        CoordinatorId = coordinatorId;
        Transport = transport;
        _time = time;
        _lastUsed = time.GetTimestamp();
        if (!ringNonce.IsEmpty)
        {
            _nonceHash = SHA256.HashData(ringNonce);
            _expectedRingBytes = expectedRingBytes;
            _rendezvousDeadline = _lastUsed + (long)(rendezvousLifetime.TotalSeconds * time.TimestampFrequency);
        }
    }

    /// <summary>Session id (passed back as <c>x-session-id</c>).</summary>
    public string Id { get; }

    /// <summary>Who shook hands (as the coordinator said; informational).</summary>
    public string CoordinatorId { get; }

    /// <summary>Negotiated transport (<see cref="RowTransport.SharedMemoryFd"/> = a ring may be attached).</summary>
    public RowTransport Transport { get; }

    /// <summary>True when the session's ring carries the doorbell's queues (requests may arrive through it).</summary>
    public bool Doorbell { get; }

    /// <summary>
    /// Claims the session's doorbell for one <c>Dispatch</c> stream (its queues have one consumer and one producer on
    /// this side); false when another stream holds it or the session has none. Paired with <see cref="ReleaseDoorbell"/>.
    /// </summary>
    /// <param name="positions">Where the previous stream's doorbell left its queues (the next stream goes on from there).</param>
    public bool TryClaimDoorbell(out (long Send, long Receive) positions)
    {
        bool claimed = Doorbell && Interlocked.CompareExchange(ref _doorbellClaimed, 1, 0) == 0;
        positions = claimed ? _doorbellPositions : default;
        return claimed;
    }

    /// <summary>Gives the doorbell back after the stream that claimed it ended, with where its queues stand (a new
    /// stream of the session may claim it and goes on from there).</summary>
    public void ReleaseDoorbell((long Send, long Receive) positions)
    {
        _doorbellPositions = positions;
        Volatile.Write(ref _doorbellClaimed, 0);
    }

    /// <summary>Where row regions may start in the ring: after the doorbell's control area, else 0.</summary>
    public ulong RowsStart => Doorbell ? (ulong)RingControl.ControlBytes : 0;

    /// <summary>The attached ring, or null (inline rows only).</summary>
    public SharedRing? Ring => Volatile.Read(ref _ring);

    /// <summary>True while a call holds the session.</summary>
    public bool InUse => Volatile.Read(ref _users) > 0;

    /// <summary>True once the session was closed.</summary>
    public bool IsClosed => Volatile.Read(ref _users) == Closed;

    /// <summary><see cref="TimeProvider.GetTimestamp"/> of the last time a call left the session (or its creation).</summary>
    public long LastUsed => Interlocked.Read(ref _lastUsed);

    /// <summary>Marks the session in use by one more call; false when it is closed (the caller must shake hands again).</summary>
    public bool TryEnter()
    {
        while (true)
        {
            int users = Volatile.Read(ref _users);
            if (users == Closed)
            {
                return false;
            }
            if (Interlocked.CompareExchange(ref _users, users + 1, users) == users)
            {
                return true;
            }
        }
    }

    /// <summary>Ends one call's use of the session (paired with a successful <see cref="TryEnter"/>).</summary>
    public void Exit()
    {
        Interlocked.Exchange(ref _lastUsed, _time.GetTimestamp());
        if (Interlocked.Decrement(ref _users) < 0)
        {
            throw new InvalidOperationException("WorkerSession.Exit without TryEnter");
        }
    }

    /// <summary>Closes the session if no call holds it (what eviction does); false when it is in use.</summary>
    public bool TryClose()
    {
        if (Interlocked.CompareExchange(ref _users, Closed, 0) != 0)
        {
            return false;
        }
        Volatile.Read(ref _ring)?.Dispose();
        return true;
    }

    /// <summary>
    /// Attaches the ring offered at the rendezvous: the nonce must match (constant time), be used for the first time
    /// and in time; the descriptor must pass <see cref="SharedRing.MapReceived"/>. Any attempt uses the nonce up.
    /// </summary>
    /// <returns>Null when attached, else why not.</returns>
    public string? AttachRing(RingAttachRequest request, long maxRingBytes)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (_nonceHash is null)
        {
            return "this session did not negotiate the shared-memory transport";
        }
        Span<byte> presented = stackalloc byte[32];
        SHA256.HashData(request.Nonce.Span, presented);
        bool match = CryptographicOperations.FixedTimeEquals(presented, _nonceHash);
        if (Interlocked.Exchange(ref _rendezvousUsed, 1) != 0)
        {
            return "this session's rendezvous nonce was already used";
        }
        if (!match)
        {
            return "wrong rendezvous nonce";
        }
        if (_time.GetTimestamp() > _rendezvousDeadline)
        {
            return "the rendezvous nonce expired (shake hands again)";
        }
        if (IsClosed)
        {
            return "the session is closed";
        }
        SharedRing ring;
        try
        {
            ring = SharedRing.MapReceived(request.Descriptor, (ulong)_expectedRingBytes, maxRingBytes);
        }
        catch (SharedRingException ex)
        {
            return ex.Message;
        }
        Volatile.Write(ref _ring, ring);
        if (IsClosed)
        {
            // Closed while mapping: nobody can use it any more.
            ring.Dispose();
            return "the session is closed";
        }
        return null;
    }

    /// <inheritdoc />
    /// <remarks>Closes the session even while in use (process shutdown); the ring is unmapped once the requests still
    /// holding references to it release them.</remarks>
    public void Dispose()
    {
        Interlocked.Exchange(ref _users, Closed);
        Volatile.Read(ref _ring)?.Dispose();
    }
}

/// <summary>
/// Live handshake sessions, at most <see cref="Capacity"/>. When full, a new session takes the place of the least
/// recently used session that is idle (no call holds it) and has been idle for at least <see cref="IdleGrace"/> (so a
/// coordinator between its Hello and its stream keeps its session); when there is none, the new session is refused
/// (the caller answers RESOURCE_EXHAUSTED). A session in use is never evicted.
/// </summary>
public sealed class SessionRegistry(int capacity, TimeSpan idleGrace, TimeProvider time) : IDisposable
{
    private readonly Dictionary<string, WorkerSession> _sessions = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

    /// <summary>Most sessions kept.</summary>
    public int Capacity { get; } = capacity > 0 ? capacity : throw new ArgumentOutOfRangeException(nameof(capacity));

    /// <summary>How long a session must have been idle before it may be evicted.</summary>
    public TimeSpan IdleGrace { get; } = idleGrace;

    /// <summary>Live sessions.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _sessions.Count;
            }
        }
    }

    /// <summary>Registers <paramref name="session"/>, evicting an idle one when full.</summary>
    /// <param name="session">The new session.</param>
    /// <param name="evicted">The session closed to make room, or null.</param>
    /// <returns>False when full and every session is in use or recently used (nothing changed).</returns>
    public bool TryAdd(WorkerSession session, out WorkerSession? evicted)
    {
        ArgumentNullException.ThrowIfNull(session);
        evicted = null;
        lock (_lock)
        {
            while (_sessions.Count >= Capacity)
            {
                long now = time.GetTimestamp();
                WorkerSession? oldest = null;
                foreach (var s in _sessions.Values)
                {
                    if (!s.InUse && time.GetElapsedTime(s.LastUsed, now) >= IdleGrace && (oldest is null || s.LastUsed < oldest.LastUsed))
                    {
                        oldest = s;
                    }
                }
                if (oldest is null)
                {
                    return false;
                }
                // Closing fails if a call entered the session since the scan; then look again.
                if (oldest.TryClose())
                {
                    _sessions.Remove(oldest.Id);
                    evicted = oldest;
                }
            }
            _sessions.Add(session.Id, session);
            return true;
        }
    }

    /// <summary>Looks a live session up.</summary>
    public bool TryGet(string id, out WorkerSession session)
    {
        lock (_lock)
        {
            if (_sessions.TryGetValue(id, out var s) && !s.IsClosed)
            {
                session = s;
                return true;
            }
        }
        session = null!;
        return false;
    }

    /// <summary>Attaches a ring offered at the rendezvous to its session (see <see cref="WorkerSession.AttachRing"/>).</summary>
    /// <returns>Null when attached, else why not.</returns>
    public string? AttachRing(RingAttachRequest request, long maxRingBytes)
    {
        ArgumentNullException.ThrowIfNull(request);
        return TryGet(request.SessionId, out var session) ? session.AttachRing(request, maxRingBytes) : "unknown session";
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var s in _sessions.Values)
            {
                s.Dispose();
            }
            _sessions.Clear();
        }
    }
}
