using System.Collections.Concurrent;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Services;

/// <summary>A handshake's outcome: the transport a coordinator's streams use, and its shared ring if any.</summary>
public sealed class WorkerSession(string id, string coordinatorId, RowTransport transport, SharedRing? ring) : IDisposable
{
    /// <summary>Session id (passed back as <c>x-session-id</c>).</summary>
    public string Id { get; } = id;

    /// <summary>Who shook hands.</summary>
    public string CoordinatorId { get; } = coordinatorId;

    /// <summary>Negotiated transport.</summary>
    public RowTransport Transport { get; } = transport;

    /// <summary>The mapped ring on the shared-memory transport.</summary>
    public SharedRing? Ring { get; } = ring;

    /// <summary>When the session was created (for eviction).</summary>
    public DateTime CreatedUtc { get; } = DateTime.UtcNow;

    /// <inheritdoc />
    public void Dispose() => Ring?.Dispose();
}

/// <summary>
/// Live handshake sessions, bounded: beyond <see cref="MaxSessions"/> the oldest is dropped (a coordinator that
/// reconnects shakes hands again).
/// </summary>
public sealed class SessionRegistry : IDisposable
{
    /// <summary>Most sessions kept.</summary>
    public const int MaxSessions = 256;

    private readonly ConcurrentDictionary<string, WorkerSession> _sessions = new();

    /// <summary>Registers a session, evicting the oldest beyond the bound.</summary>
    public void Add(WorkerSession session)
    {
        _sessions[session.Id] = session;
        while (_sessions.Count > MaxSessions)
        {
            var oldest = _sessions.Values.MinBy(s => s.CreatedUtc);
            if (oldest is null || !_sessions.TryRemove(oldest.Id, out var removed))
            {
                break;
            }
            removed.Dispose();
        }
    }

    /// <summary>Looks a session up.</summary>
    public bool TryGet(string id, out WorkerSession session) => _sessions.TryGetValue(id, out session!);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var s in _sessions.Values)
        {
            s.Dispose();
        }
        _sessions.Clear();
    }
}
