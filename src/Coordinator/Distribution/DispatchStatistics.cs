using System.Diagnostics;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Where dispatch time goes, summed over all dispatches (thread-safe counters). Stopwatch ticks are converted to
/// milliseconds on read. Wire time = wait for replies − worker-side time (decode + compute + encode), an upper bound
/// on what the transport itself costs.
/// </summary>
public sealed class DispatchStatistics
{
    private long _dispatches;
    private long _requests;
    private long _bytesSent;
    private long _bytesReceived;
    private long _serializeTicks;
    private long _waitTicks;
    private long _combineTicks;
    private long _workerNanos;
    private long _workerComputeNanos;
    private long _inFlightTicks;

    /// <summary>MoE-layer dispatches completed.</summary>
    public long Dispatches => Interlocked.Read(ref _dispatches);

    /// <summary>Per-worker requests sent.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Row bytes sent (inline or through the shared ring).</summary>
    public long BytesSent => Interlocked.Read(ref _bytesSent);

    /// <summary>Row bytes received.</summary>
    public long BytesReceived => Interlocked.Read(ref _bytesReceived);

    /// <summary>Gather, scale and encode rows, build and write requests.</summary>
    public double SerializeMs => Ms(Interlocked.Read(ref _serializeTicks));

    /// <summary>Time CombineAsync spent blocked waiting for replies: the wire wait the caller could not hide.</summary>
    public double WaitMs => Ms(Interlocked.Read(ref _waitTicks));

    /// <summary>Time rows were away: from a dispatch's first request written to its last reply received, summed over
    /// dispatches (only replies that carry a receive time count).</summary>
    public double InFlightMs => Ms(Interlocked.Read(ref _inFlightTicks));

    /// <summary>Share of the in-flight time during which the caller was not blocked in CombineAsync
    /// (1 − <see cref="WaitMs"/> / <see cref="InFlightMs"/>, clamped to [0, 1]; 0 when nothing was in flight): how much
    /// of the wire the caller hid behind its own work (the shared expert, or another micro-batch).</summary>
    public double HiddenShare => InFlightMs <= 0 ? 0 : Math.Clamp(1 - WaitMs / InFlightMs, 0, 1);

    /// <summary>Decode replies and sum slots per token.</summary>
    public double CombineMs => Ms(Interlocked.Read(ref _combineTicks));

    /// <summary>Worker-side decode + compute + encode, as reported in replies.</summary>
    public double WorkerMs => Interlocked.Read(ref _workerNanos) / 1e6;

    /// <summary>Worker-side expert compute only.</summary>
    public double WorkerComputeMs => Interlocked.Read(ref _workerComputeNanos) / 1e6;

    internal void AddDispatch(long serializeTicks, int requests, long bytes)
    {
        Interlocked.Add(ref _serializeTicks, serializeTicks);
        Interlocked.Add(ref _requests, requests);
        Interlocked.Add(ref _bytesSent, bytes);
    }

    internal void AddCombine(long waitTicks, long combineTicks, long bytes, long workerNanos, long workerComputeNanos, long inFlightTicks = 0)
    {
        Interlocked.Add(ref _inFlightTicks, inFlightTicks);
        Interlocked.Increment(ref _dispatches);
        Interlocked.Add(ref _waitTicks, waitTicks);
        Interlocked.Add(ref _combineTicks, combineTicks);
        Interlocked.Add(ref _bytesReceived, bytes);
        Interlocked.Add(ref _workerNanos, workerNanos);
        Interlocked.Add(ref _workerComputeNanos, workerComputeNanos);
    }

    /// <summary>Zeroes every counter.</summary>
    public void Reset()
    {
        Interlocked.Exchange(ref _dispatches, 0);
        Interlocked.Exchange(ref _requests, 0);
        Interlocked.Exchange(ref _bytesSent, 0);
        Interlocked.Exchange(ref _bytesReceived, 0);
        Interlocked.Exchange(ref _serializeTicks, 0);
        Interlocked.Exchange(ref _waitTicks, 0);
        Interlocked.Exchange(ref _combineTicks, 0);
        Interlocked.Exchange(ref _workerNanos, 0);
        Interlocked.Exchange(ref _workerComputeNanos, 0);
        Interlocked.Exchange(ref _inFlightTicks, 0);
    }

    private static double Ms(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;

    /// <inheritdoc />
    public override string ToString()
        => $"{Dispatches} dispatches, {Requests} requests: serialize {SerializeMs:F1} ms, wait {WaitMs:F1} ms (worker {WorkerMs:F1} ms, compute {WorkerComputeMs:F1} ms), combine {CombineMs:F1} ms, {BytesSent / 1024.0:F0} KiB sent";
}
