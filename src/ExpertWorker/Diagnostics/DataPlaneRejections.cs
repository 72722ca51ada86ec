using Grpc.Core;

namespace Distributed.ExpertWorker.Diagnostics;

/// <summary>What a data-plane refusal was about (one rate limit per kind).</summary>
public enum RejectionKind
{
    /// <summary>No or a wrong cluster credential.</summary>
    Unauthenticated,
    /// <summary>A gRPC message frame that breaks the framing: compressed, over the size limit, truncated, a second
    /// message on a unary call, a message that does not parse.</summary>
    MalformedFrame,
    /// <summary>A request that parsed but failed validation (shape, shard, plan version, values).</summary>
    InvalidRequest,
    /// <summary>A request id already in flight on the stream.</summary>
    DuplicateRequestId,
    /// <summary>A Hello refused because every session is in use.</summary>
    SessionsExhausted,
    /// <summary>A shared ring refused at the rendezvous (bad descriptor, wrong nonce, unknown session).</summary>
    RingRefused,
}

/// <summary>
/// Logs data-plane refusals without letting a hostile or broken peer flood the log: at most one line per
/// <see cref="RejectionKind"/> per <see cref="Interval"/>, carrying the number of refusals of that kind suppressed since
/// the previous line. Never a stack trace: the refusal is the peer's error, described in one line. Every refusal still
/// gets its precise status on the wire.
/// </summary>
public sealed partial class DataPlaneRejections(ILogger<DataPlaneRejections> logger, TimeProvider time)
{
    /// <summary>Shortest time between two lines of one kind.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);

    private readonly Lock _lock = new();
    private readonly long[] _lastLogged = Enumerable.Repeat(long.MinValue, Enum.GetValues<RejectionKind>().Length).ToArray();
    private readonly long[] _suppressed = new long[Enum.GetValues<RejectionKind>().Length];
    private long _total;

    /// <summary>Refusals reported so far (all kinds).</summary>
    public long Total => Interlocked.Read(ref _total);

    /// <summary>Records one refusal and logs it unless a line of its kind was written within <see cref="Interval"/>.</summary>
    /// <param name="kind">What it was about.</param>
    /// <param name="code">The status the peer got.</param>
    /// <param name="reason">One line; must not hold secrets.</param>
    public void Report(RejectionKind kind, StatusCode code, string reason)
    {
        Interlocked.Increment(ref _total);
        long suppressed;
        lock (_lock)
        {
            long now = time.GetTimestamp();
            long last = _lastLogged[(int)kind];
            if (last != long.MinValue && time.GetElapsedTime(last, now) < Interval)
            {
                _suppressed[(int)kind]++;
                return;
            }
            _lastLogged[(int)kind] = now;
            suppressed = _suppressed[(int)kind];
            _suppressed[(int)kind] = 0;
        }
        LogRefused(kind, code, reason, suppressed);
    }

    /// <summary>Peer-chosen text made safe for one log line or status message: printable ASCII only (anything else
    /// becomes '?'), at most <paramref name="max"/> characters (then an ellipsis).</summary>
    public static string Printable(string? text, int max = 64)
    {
        if (string.IsNullOrEmpty(text))
        {
            return "";
        }
        var clean = new string([.. text.Take(max).Select(c => c is >= ' ' and <= '~' ? c : '?')]);
        return text.Length > max ? clean + "…" : clean;
    }

    [LoggerMessage(EventId = LogEvents.DataPlaneRefused, Level = LogLevel.Warning,
        Message = "Data plane refused a call ({Kind}, {Code}): {Reason} ({Suppressed} more of this kind not logged since the last line)")]
    private partial void LogRefused(RejectionKind kind, StatusCode code, string reason, long suppressed);
}
