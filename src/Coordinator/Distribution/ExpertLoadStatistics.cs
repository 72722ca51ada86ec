using System.Collections.Concurrent;
using System.Diagnostics;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Routed-token counts per MoE layer and expert, in total and over a sliding window of recent time buckets (what a
/// rebalance packs by), plus data-plane figures per worker. Thread-safe; recording is a few interlocked adds per
/// expert used by a dispatch.
/// </summary>
public sealed class ExpertLoadStatistics
{
    private readonly ModelDescriptor _model;
    private readonly long[][] _total;        // [moe layer index][expert]
    private readonly long[][][] _buckets;    // [bucket][moe layer index][expert]
    private readonly long[] _bucketEpoch;    // bucket -> epoch (timestamp / bucket length) it holds
    private readonly long _bucketTicks;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, WorkerDispatchCounters> _workers = new(StringComparer.Ordinal);

    /// <summary>Creates empty statistics.</summary>
    /// <param name="window">Length of the recent window. Default: 60 s.</param>
    /// <param name="buckets">Buckets the window is split into (its resolution). Default: 12.</param>
    /// <param name="timeProvider">The clock of the recent window. Default: <see cref="TimeProvider.System"/>.</param>
    public ExpertLoadStatistics(ModelDescriptor model, TimeSpan? window = null, int buckets = 12, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(buckets, 1);
        _model = model;
        Window = window ?? TimeSpan.FromSeconds(60);
        _time = timeProvider ?? TimeProvider.System;
        _bucketTicks = Math.Max(1, (long)(Window.TotalSeconds * _time.TimestampFrequency / buckets));
        _total = NewCounts();
        _buckets = new long[buckets][][];
        for (int b = 0; b < buckets; b++)
        {
            _buckets[b] = NewCounts();
        }
        _bucketEpoch = new long[buckets];
        Array.Fill(_bucketEpoch, -1);
    }

    /// <summary>Length of the recent window.</summary>
    public TimeSpan Window { get; }

    /// <summary>The model the counts are for.</summary>
    public ModelDescriptor Model => _model;

    /// <summary>Counts <paramref name="rowCounts"/>[i] rows routed to expert <paramref name="experts"/>[i] of <paramref name="layer"/>.</summary>
    public void RecordRouting(int layer, ReadOnlySpan<int> experts, ReadOnlySpan<int> rowCounts)
    {
        int li = Array.IndexOf(_model.MoeLayers, layer);
        if (li < 0)
        {
            return;
        }
        var bucket = CurrentBucket();
        for (int i = 0; i < experts.Length; i++)
        {
            Interlocked.Add(ref _total[li][experts[i]], rowCounts[i]);
            Interlocked.Add(ref bucket[li][experts[i]], rowCounts[i]);
        }
    }

    /// <summary>Counters of one worker (created on first use).</summary>
    public WorkerDispatchCounters Worker(string workerId) => _workers.GetOrAdd(workerId, id => new WorkerDispatchCounters(id));

    /// <summary>Every worker seen so far.</summary>
    public IReadOnlyList<WorkerDispatchCounters> Workers => [.. _workers.Values.OrderBy(w => w.WorkerId, StringComparer.Ordinal)];

    /// <summary>Rows routed per expert of MoE layer <paramref name="layer"/>: (recent window, total since start).</summary>
    public (long[] Recent, long[] Total) Layer(int layer)
    {
        int li = Array.IndexOf(_model.MoeLayers, layer);
        if (li < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "not a MoE layer");
        }
        var recent = new long[_model.NumExperts];
        long now = Epoch();
        for (int b = 0; b < _buckets.Length; b++)
        {
            long epoch = Volatile.Read(ref _bucketEpoch[b]);
            if (epoch >= 0 && now - epoch < _buckets.Length)
            {
                for (int e = 0; e < recent.Length; e++)
                {
                    recent[e] += Volatile.Read(ref _buckets[b][li][e]);
                }
            }
        }
        var total = new long[_model.NumExperts];
        for (int e = 0; e < total.Length; e++)
        {
            total[e] = Volatile.Read(ref _total[li][e]);
        }
        return (recent, total);
    }

    private long Epoch() => _time.GetTimestamp() / _bucketTicks;

    private long[][] CurrentBucket()
    {
        long epoch = Epoch();
        int b = (int)(epoch % _buckets.Length);
        long seen = Volatile.Read(ref _bucketEpoch[b]);
        if (seen != epoch)
        {
            lock (_bucketEpoch)
            {
                if (_bucketEpoch[b] != epoch)
                {
                    foreach (var row in _buckets[b])
                    {
                        Array.Clear(row);
                    }
                    Volatile.Write(ref _bucketEpoch[b], epoch);
                }
            }
        }
        return _buckets[b];
    }

    private long[][] NewCounts()
    {
        var counts = new long[_model.MoeLayers.Length][];
        for (int i = 0; i < counts.Length; i++)
        {
            counts[i] = new long[_model.NumExperts];
        }
        return counts;
    }
}

/// <summary>Data-plane figures of one worker as this coordinator saw them (thread-safe).</summary>
public sealed class WorkerDispatchCounters(string workerId)
{
    private long _requests;
    private long _rows;
    private long _bytesSent;
    private long _bytesReceived;
    private long _latencyTicks;
    private long _maxLatencyTicks;
    private long _failures;
    private long _outstandingRows;

    /// <summary>The worker.</summary>
    public string WorkerId { get; } = workerId;

    /// <summary>Requests answered successfully.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Rows those requests carried.</summary>
    public long Rows => Interlocked.Read(ref _rows);

    /// <summary>Row bytes sent.</summary>
    public long BytesSent => Interlocked.Read(ref _bytesSent);

    /// <summary>Row bytes received.</summary>
    public long BytesReceived => Interlocked.Read(ref _bytesReceived);

    /// <summary>Requests that failed (connection lost, deadline, refusal).</summary>
    public long Failures => Interlocked.Read(ref _failures);

    /// <summary>Rows sent and not yet answered (the load replica selection compares).</summary>
    public long OutstandingRows => Interlocked.Read(ref _outstandingRows);

    /// <summary>Mean time from send to reply, in milliseconds.</summary>
    public double MeanLatencyMs => Requests == 0 ? 0 : Interlocked.Read(ref _latencyTicks) * 1000.0 / Stopwatch.Frequency / Requests;

    /// <summary>Longest time from send to reply, in milliseconds.</summary>
    public double MaxLatencyMs => Interlocked.Read(ref _maxLatencyTicks) * 1000.0 / Stopwatch.Frequency;

    internal void Sent(int rows, long bytes)
    {
        Interlocked.Add(ref _outstandingRows, rows);
        Interlocked.Add(ref _bytesSent, bytes);
    }

    internal void Answered(int rows, long bytes, long latencyTicks)
    {
        Interlocked.Add(ref _outstandingRows, -rows);
        Interlocked.Increment(ref _requests);
        Interlocked.Add(ref _rows, rows);
        Interlocked.Add(ref _bytesReceived, bytes);
        Interlocked.Add(ref _latencyTicks, latencyTicks);
        long max = Interlocked.Read(ref _maxLatencyTicks);
        while (latencyTicks > max)
        {
            long seen = Interlocked.CompareExchange(ref _maxLatencyTicks, latencyTicks, max);
            if (seen == max)
            {
                break;
            }
            max = seen;
        }
    }

    internal void Failed(int rows)
    {
        Interlocked.Add(ref _outstandingRows, -rows);
        Interlocked.Increment(ref _failures);
    }
}
