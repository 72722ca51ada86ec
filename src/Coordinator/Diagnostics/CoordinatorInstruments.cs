using System.Diagnostics;
using System.Diagnostics.Metrics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Scheduling;

namespace Distributed.Coordinator.Diagnostics;

/// <summary>
/// Every metric the coordinator publishes, on the meter <see cref="MeterName"/> (exported as Prometheus text at
/// <c>/metrics</c>; names below are the Prometheus ones). Recording methods are allocation-free and cost a few
/// tens of nanoseconds each: per MoE layer the dispatcher records two histograms and one counter per worker, per
/// token the serving path records one histogram; per-expert counts are plain array increments read at scrape time.
/// <list type="bullet">
/// <item><c>moe_requests_total{outcome}</c>: finished requests by outcome (stop, length, context_length, cancelled, error, rejected).</item>
/// <item><c>moe_request_ttft_seconds</c>, <c>moe_request_inter_token_seconds</c>: histograms of time to first token and between tokens.</item>
/// <item><c>moe_tokens_generated_total</c>: generated tokens (tokens/s = its rate).</item>
/// <item><c>moe_scheduler_queue_depth</c>, <c>moe_scheduler_running</c>, <c>moe_kv_blocks{state=used|cached|free}</c>: scheduler gauges.</item>
/// <item><c>moe_prefix_cache_queried_tokens_total</c>, <c>moe_prefix_cache_hit_tokens_total</c>, <c>moe_prefix_cache_evictions_total</c>,
/// <c>moe_scheduler_preemptions_total</c>: prefix cache and preemption counters.</item>
/// <item><c>moe_dispatch_duration_seconds{layer}</c>, <c>moe_combine_duration_seconds{layer}</c>: per MoE layer.</item>
/// <item><c>moe_worker_rows_total{worker}</c>, <c>moe_worker_bytes_total{worker,direction}</c>, <c>moe_worker_rtt_seconds{worker}</c>: the coordinator↔worker matrix.</item>
/// <item><c>moe_expert_routed_tokens_total{layer,expert}</c>: routed token rows per expert while layers × experts ≤
/// <see cref="MaxExpertSeries"/>; above it, <c>{layer,worker}</c> (rows of the layer's experts summed per worker currently holding them).</item>
/// <item><c>moe_placement_plan_version</c>, <c>moe_placement_events_total{kind}</c>: plan in use, and rebalance/drain/plan-change events.</item>
/// </list>
/// </summary>
public sealed class CoordinatorInstruments : IDisposable
{
    /// <summary>The meter's name (OpenTelemetry <c>AddMeter</c>).</summary>
    public const string MeterName = "Distributed.Coordinator";

    /// <summary>The trace source's name (OpenTelemetry <c>AddSource</c>).</summary>
    public const string ActivitySourceName = "Distributed.Coordinator";

    /// <summary>Default for <see cref="MaxExpertSeries"/>: covers Maverick (24 MoE layers × 128) and Scout (48 × 16).</summary>
    public const int DefaultMaxExpertSeries = 4096;

    /// <summary>Bucket bounds (seconds) of the latency histograms: 0.5 ms to 30 s.</summary>
    public static readonly double[] LatencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    private static readonly KeyValuePair<string, object?>[] OutcomeTags =
        [.. new[] { "stop", "length", "context_length", "cancelled", "error", "rejected" }.Select(o => new KeyValuePair<string, object?>("outcome", o))];

    private readonly Meter _meter;
    private readonly Counter<long> _requests;
    private readonly Histogram<double> _ttft;
    private readonly Histogram<double> _interToken;
    private readonly Counter<long> _tokens;
    private readonly Histogram<double> _dispatch;
    private readonly Histogram<double> _combine;
    private readonly Counter<long> _workerRows;
    private readonly Counter<long> _workerBytes;
    private readonly Histogram<double> _workerRtt;
    private readonly Counter<long> _placementEvents;
    private readonly object _sourcesLock = new();
    private KeyValuePair<string, object?>[] _layerTags = [];
    private ExpertLoad? _expertLoad;
    private Func<SchedulerStats>? _scheduler;
    private ulong _lastPlanVersion;
    private IPlacementSource? _placement;

    /// <summary>Creates the instruments on a new meter (one instance per host).</summary>
    /// <param name="maxExpertSeries">Largest layers × experts exported per expert; above it per worker. Must be ≥ 1.</param>
    public CoordinatorInstruments(int maxExpertSeries = DefaultMaxExpertSeries)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxExpertSeries, 1);
        MaxExpertSeries = maxExpertSeries;
        _meter = new Meter(MeterName);
        _requests = _meter.CreateCounter<long>("moe.requests", "{request}", "Finished requests by outcome");
        _ttft = _meter.CreateHistogram("moe.request.ttft", "s", "Time from admission request to first generated token",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _interToken = _meter.CreateHistogram("moe.request.inter_token", "s", "Time between consecutive tokens of one request",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _tokens = _meter.CreateCounter<long>("moe.tokens.generated", "{token}", "Generated tokens");
        _dispatch = _meter.CreateHistogram("moe.dispatch.duration", "s", "Per MoE layer: gather, encode and send rows to the workers",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _combine = _meter.CreateHistogram("moe.combine.duration", "s", "Per MoE layer: wait for every worker's reply, decode and sum",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _workerRows = _meter.CreateCounter<long>("moe.worker.rows", "{row}", "Token rows sent to each worker");
        _workerBytes = _meter.CreateCounter<long>("moe.worker.bytes", "By", "Row bytes exchanged with each worker, by direction");
        _workerRtt = _meter.CreateHistogram("moe.worker.rtt", "s", "Send to reply observed, per worker request",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _placementEvents = _meter.CreateCounter<long>("moe.placement.events", "{event}", "Placement events: plan_change, rebalance, drain");
        _meter.CreateObservableGauge("moe.scheduler.queue_depth", () => _scheduler is { } s ? [new Measurement<int>(s().Queued)] : Array.Empty<Measurement<int>>(),
            "{request}", "Requests waiting for admission");
        _meter.CreateObservableGauge("moe.scheduler.running", () => _scheduler is { } s ? [new Measurement<int>(s().Running)] : Array.Empty<Measurement<int>>(),
            "{sequence}", "Sequences in the running batch");
        _meter.CreateObservableGauge("moe.kv.blocks", ObserveKvBlocks, "{block}", "Paged KV cache blocks by state: used (held by sequences), cached (kept for their prefix), free");
        _meter.CreateObservableCounter("moe.prefix_cache.queried_tokens", () => SchedulerCounter(s => s.PrefixQueriedTokens), "{token}",
            "Tokens admitted sequences looked up in the prefix cache (hit rate = hit_tokens / queried_tokens)");
        _meter.CreateObservableCounter("moe.prefix_cache.hit_tokens", () => SchedulerCounter(s => s.PrefixHitTokens), "{token}",
            "Tokens found in the prefix cache (not computed again)");
        _meter.CreateObservableCounter("moe.prefix_cache.evictions", () => SchedulerCounter(s => s.PrefixEvictions), "{block}",
            "Cached KV blocks evicted to make room");
        _meter.CreateObservableCounter("moe.scheduler.preemptions", () => SchedulerCounter(s => s.Preemptions), "{sequence}",
            "Sequences preempted (KV blocks freed, recomputed later) because blocks ran out");
        _meter.CreateObservableGauge("moe.placement.plan_version", ObservePlanVersion, "{version}", "Placement plan version the dispatcher routes with");
        _meter.CreateObservableCounter("moe.expert.routed_tokens", ObserveExpertLoad, "{row}", "Token rows routed per expert (or per worker above the series limit)");
    }

    /// <summary>Largest layers × experts exported per expert; above it the counts are summed per worker.</summary>
    public int MaxExpertSeries { get; }

    /// <summary>
    /// The coordinator's spans: <c>generate</c> per request with <c>prefill</c> and <c>decode_step</c> children,
    /// <c>moe.step</c> per scheduler step (linked to the requests in its batch), <c>moe.dispatch</c> per MoE layer and
    /// worker (its context travels to the worker in <c>ExpertRequest.traceparent</c>). Process-wide, like the runtime's own sources.
    /// </summary>
    public static ActivitySource Tracing { get; } = new(ActivitySourceName);

    /// <summary>The same as <see cref="Tracing"/>.</summary>
    public ActivitySource ActivitySource => Tracing;

    /// <summary>Per-expert routed-row counts since start (null until a dispatcher is attached).</summary>
    public ExpertLoad? ExpertLoad => Volatile.Read(ref _expertLoad);

    /// <summary>Publishes the scheduler's gauges (queue depth, running sequences, KV blocks).</summary>
    public void AttachScheduler(Func<SchedulerStats> stats)
    {
        ArgumentNullException.ThrowIfNull(stats);
        _scheduler = stats;
    }

    /// <summary>Publishes the plan version and sizes the per-expert counters for <paramref name="placement"/>'s model.</summary>
    public void AttachPlacement(IPlacementSource placement, int numLayers, int numExperts)
    {
        ArgumentNullException.ThrowIfNull(placement);
        lock (_sourcesLock)
        {
            _placement = placement;
            _layerTags = [.. Enumerable.Range(0, numLayers).Select(l => new KeyValuePair<string, object?>("layer", l.ToString(System.Globalization.CultureInfo.InvariantCulture)))];
            Volatile.Write(ref _expertLoad, new ExpertLoad(numLayers, numExperts));
        }
    }

    /// <summary>A finished request.</summary>
    public void RequestFinished(RequestOutcome outcome) => _requests.Add(1, OutcomeTags[(int)outcome]);

    /// <summary>The first token of a request, <paramref name="seconds"/> after it arrived.</summary>
    public void FirstToken(double seconds)
    {
        _ttft.Record(seconds);
        _tokens.Add(1);
    }

    /// <summary>A later token, <paramref name="seconds"/> after the previous one.</summary>
    public void NextToken(double seconds)
    {
        _interToken.Record(seconds);
        _tokens.Add(1);
    }

    /// <summary>A placement event: <c>plan_change</c> (recorded by the dispatcher), <c>rebalance</c> and <c>drain</c> (recorded by the admin operations that start them).</summary>
    public void PlacementEvent(string kind) => _placementEvents.Add(1, new KeyValuePair<string, object?>("kind", kind));

    /// <summary>One MoE layer's dispatch finished sending: per-expert rows are counted, the latency recorded.</summary>
    /// <param name="experts">Distinct experts of the dispatch (ascending).</param>
    /// <param name="rowCounts">Rows per entry of <paramref name="experts"/>.</param>
    /// <param name="planVersion">Plan the dispatch routed with; a change from the previous dispatch counts a plan_change event.</param>
    internal void Dispatched(int layer, long elapsedTicks, ReadOnlySpan<int> experts, ReadOnlySpan<int> rowCounts, ulong planVersion)
    {
        ulong previous = Interlocked.Exchange(ref _lastPlanVersion, planVersion);
        if (previous != planVersion && previous != 0)
        {
            PlacementEvent("plan_change");
        }
        _expertLoad?.Add(layer, experts, rowCounts);
        var tags = _layerTags;
        if ((uint)layer < (uint)tags.Length)
        {
            _dispatch.Record(Seconds(elapsedTicks), tags[layer]);
        }
    }

    /// <summary>One request sent to <paramref name="workerId"/>.</summary>
    internal void WorkerSent(string workerId, int rows, long bytes)
    {
        var worker = new KeyValuePair<string, object?>("worker", workerId);
        _workerRows.Add(rows, worker);
        _workerBytes.Add(bytes, worker, new KeyValuePair<string, object?>("direction", "sent"));
    }

    /// <summary>A reply from <paramref name="workerId"/>, <paramref name="rttTicks"/> after its request was sent.</summary>
    internal void WorkerReplied(string workerId, long bytes, long rttTicks)
    {
        var worker = new KeyValuePair<string, object?>("worker", workerId);
        _workerBytes.Add(bytes, worker, new KeyValuePair<string, object?>("direction", "received"));
        _workerRtt.Record(Seconds(rttTicks), worker);
    }

    /// <summary>One MoE layer's combine finished.</summary>
    internal void Combined(int layer, long elapsedTicks)
    {
        var tags = _layerTags;
        if ((uint)layer < (uint)tags.Length)
        {
            _combine.Record(Seconds(elapsedTicks), tags[layer]);
        }
    }

    private static double Seconds(long ticks) => ticks / (double)Stopwatch.Frequency;

    private Measurement<long>[] SchedulerCounter(Func<SchedulerStats, long> read) => _scheduler is { } s ? [new Measurement<long>(read(s()))] : [];

    private IEnumerable<Measurement<int>> ObserveKvBlocks()
    {
        if (_scheduler is not { } s)
        {
            return [];
        }
        var stats = s();
        return
        [
            new Measurement<int>(stats.KvBlocksUsed, new KeyValuePair<string, object?>("state", "used")),
            new Measurement<int>(stats.KvBlocksTotal - stats.KvBlocksUsed - stats.KvBlocksCached, new KeyValuePair<string, object?>("state", "free")),
            new Measurement<int>(stats.KvBlocksCached, new KeyValuePair<string, object?>("state", "cached")),
        ];
    }

    private IEnumerable<Measurement<long>> ObservePlanVersion()
    {
        if (_placement is not { } p)
        {
            return [];
        }
        try
        {
            return [new Measurement<long>((long)p.GetServingTable().Version)];
        }
        catch (ExpertDispatchException)
        {
            // No serving plan: the series disappears, and readiness reports why.
            return [];
        }
    }

    private IEnumerable<Measurement<long>> ObserveExpertLoad()
    {
        var load = ExpertLoad;
        if (load is null)
        {
            return [];
        }
        var tags = _layerTags;
        var counts = load.Snapshot();
        var result = new List<Measurement<long>>();
        if (load.Layers * load.Experts <= MaxExpertSeries)
        {
            for (int l = 0; l < load.Layers; l++)
            {
                for (int e = 0; e < load.Experts; e++)
                {
                    long v = counts[l * load.Experts + e];
                    if (v > 0)
                    {
                        result.Add(new Measurement<long>(v, tags[l], new KeyValuePair<string, object?>("expert", e.ToString(System.Globalization.CultureInfo.InvariantCulture))));
                    }
                }
            }
            return result;
        }
        ExpertPlacementTable? table = null;
        try
        {
            table = _placement?.GetServingTable();
        }
        catch (ExpertDispatchException)
        {
        }
        if (table is null)
        {
            return result;
        }
        var perWorker = new long[table.Workers.Count];
        for (int l = 0; l < load.Layers; l++)
        {
            Array.Clear(perWorker);
            for (int e = 0; e < load.Experts; e++)
            {
                long v = counts[l * load.Experts + e];
                var owners = v > 0 && table.Model.IsMoeLayer(l) ? table.OwnersOf(l, e) : default;
                if (!owners.IsEmpty)
                {
                    perWorker[owners[0]] += v;
                }
            }
            for (int w = 0; w < perWorker.Length; w++)
            {
                if (perWorker[w] > 0)
                {
                    result.Add(new Measurement<long>(perWorker[w], tags[l], new KeyValuePair<string, object?>("worker", table.Workers[w].WorkerId)));
                }
            }
        }
        return result;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _meter.Dispose();
    }
}

/// <summary>How a request ended (the <c>outcome</c> label of <c>moe_requests_total</c>).</summary>
public enum RequestOutcome
{
    /// <summary>A stop token or sequence.</summary>
    Stop = 0,
    /// <summary>max_tokens reached.</summary>
    Length = 1,
    /// <summary>The model's context is full.</summary>
    ContextLength = 2,
    /// <summary>The client went away or the server stopped.</summary>
    Cancelled = 3,
    /// <summary>The generation failed (e.g. a worker could not be reached).</summary>
    Error = 4,
    /// <summary>Not admitted (queue full, too large).</summary>
    Rejected = 5,
}

/// <summary>
/// Token rows routed to each (layer, expert) since start: one <see cref="Interlocked.Add(ref long, long)"/> per
/// distinct expert of a dispatch (≤ top-k × tokens, usually far fewer). Read by the metrics and the dashboard.
/// </summary>
public sealed class ExpertLoad(int layers, int experts)
{
    private readonly long[] _counts = new long[checked(layers * experts)];

    /// <summary>Layers of the model (dense ones stay zero).</summary>
    public int Layers { get; } = layers;

    /// <summary>Routed experts per MoE layer.</summary>
    public int Experts { get; } = experts;

    /// <summary>Adds <paramref name="rowCounts"/>[i] rows to expert <paramref name="experts"/>[i] of <paramref name="layer"/>.</summary>
    public void Add(int layer, ReadOnlySpan<int> experts, ReadOnlySpan<int> rowCounts)
    {
        if ((uint)layer >= (uint)Layers)
        {
            return;
        }
        int baseIndex = layer * Experts;
        for (int i = 0; i < experts.Length && i < rowCounts.Length; i++)
        {
            if ((uint)experts[i] < (uint)Experts)
            {
                Interlocked.Add(ref _counts[baseIndex + experts[i]], rowCounts[i]);
            }
        }
    }

    /// <summary>A copy of the counts, row-major [layer, expert].</summary>
    public long[] Snapshot()
    {
        var copy = new long[_counts.Length];
        for (int i = 0; i < copy.Length; i++)
        {
            copy[i] = Interlocked.Read(ref _counts[i]);
        }
        return copy;
    }
}
