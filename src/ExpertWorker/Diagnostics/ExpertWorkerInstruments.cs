using System.Diagnostics;
using System.Diagnostics.Metrics;
using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Grpc;

namespace Distributed.ExpertWorker.Diagnostics;

/// <summary>
/// Every metric an expert worker publishes, on the meter <see cref="MeterName"/> (Prometheus text at <c>/metrics</c>
/// on the worker's operations port; names below are the Prometheus ones). Per request: one counter and, on success,
/// one counter and one histogram, all tagged with a pre-built layer tag (no allocation).
/// <list type="bullet">
/// <item><c>moe_expert_requests_total{outcome=ok|rejected|failed}</c>: data-plane requests answered.</item>
/// <item><c>moe_expert_rows_total{layer}</c>: token rows computed per MoE layer.</item>
/// <item><c>moe_expert_compute_duration_seconds{layer}</c>: expert FFN time per request (worker side, excludes the wire).</item>
/// <item><c>moe_shard_plan_version</c>, <c>moe_shard_experts</c>, <c>moe_shard_resident_bytes</c>, <c>moe_shard_ready</c> (1 = serving its plan, warm).</item>
/// </list>
/// Spans: <c>expert.compute</c> per request, child of the coordinator's <c>moe.dispatch</c> span when the request
/// carries its W3C <c>traceparent</c>.
/// </summary>
public sealed class ExpertWorkerInstruments : IDisposable
{
    /// <summary>The meter's name (OpenTelemetry <c>AddMeter</c>).</summary>
    public const string MeterName = "Distributed.ExpertWorker";

    /// <summary>The trace source's name (OpenTelemetry <c>AddSource</c>).</summary>
    public const string ActivitySourceName = "Distributed.ExpertWorker";

    private static readonly double[] ComputeBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];
    private static readonly KeyValuePair<string, object?> Ok = new("outcome", "ok");
    private static readonly KeyValuePair<string, object?> Rejected = new("outcome", "rejected");
    private static readonly KeyValuePair<string, object?> Failed = new("outcome", "failed");

    private readonly Meter _meter;
    private readonly KeyValuePair<string, object?>[] _layerTags;
    private readonly Counter<long> _requests;
    private readonly Counter<long> _rows;
    private readonly Histogram<double> _compute;

    /// <summary>Creates the instruments over <paramref name="store"/> (its gauges are read at scrape time).</summary>
    public ExpertWorkerInstruments(ShardStore store)
    {
        ArgumentNullException.ThrowIfNull(store);
        _meter = new Meter(MeterName);
        ActivitySource = new ActivitySource(ActivitySourceName);
        _layerTags = [.. Enumerable.Range(0, store.Model.NumLayers)
            .Select(l => new KeyValuePair<string, object?>("layer", l.ToString(System.Globalization.CultureInfo.InvariantCulture)))];
        _requests = _meter.CreateCounter<long>("moe.expert.requests", "{request}", "Data-plane requests answered, by outcome");
        _rows = _meter.CreateCounter<long>("moe.expert.rows", "{row}", "Token rows computed per MoE layer");
        _compute = _meter.CreateHistogram("moe.expert.compute.duration", "s", "Expert FFN time per request",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = ComputeBuckets });
        _meter.CreateObservableGauge("moe.shard.plan_version", () => (long)store.PlanVersion, "{version}", "Placement plan version this shard serves");
        _meter.CreateObservableGauge("moe.shard.experts", () => store.Status.Experts, "{expert}", "Experts held");
        _meter.CreateObservableGauge("moe.shard.resident_bytes", () => store.Status.ResidentBytes, "By", "Bytes of expert weights held");
        _meter.CreateObservableGauge("moe.shard.ready", () => NotReadyReason(store.Status) is null ? 1 : 0, "{bool}", "1 when the shard serves its plan, warm");
    }

    /// <summary>Spans of this worker.</summary>
    public ActivitySource ActivitySource { get; }

    /// <summary>Null when <paramref name="status"/> is ready to serve (its plan's experts loaded and warm); otherwise why not.</summary>
    public static string? NotReadyReason(ShardStatus status)
    {
        ArgumentNullException.ThrowIfNull(status);
        return status.State switch
        {
            ShardState.Serving => null,
            ShardState.Empty when status.PlanVersion > 0 => null,
            // Holding a staged next plan version (issue #5) while the committed version serves.
            ShardState.Staged when status.PlanVersion > 0 => null,
            ShardState.Empty => "waiting for a placement plan",
            ShardState.Loading => $"loading the experts of plan {status.PlanVersion}+",
            ShardState.Warming => $"warming the experts of plan {status.PlanVersion}+",
            ShardState.Failed => $"failed to load its shard: {status.Error}",
            _ => $"shard state {status.State}",
        };
    }

    /// <summary>Starts the <c>expert.compute</c> span of <paramref name="request"/> (null when nobody listens).</summary>
    public Activity? StartCompute(ExpertRequest request)
    {
        if (!ActivitySource.HasListeners())
        {
            return null;
        }
        ActivityContext.TryParse(request.Traceparent, null, out var parent);
        var span = ActivitySource.StartActivity("expert.compute", ActivityKind.Server, parent);
        span?.SetTag("moe.layer", request.Layer);
        span?.SetTag("moe.rows", request.Rows);
        return span;
    }

    /// <summary>Records one answered request.</summary>
    public void Answered(ExpertRequest request, ExpertReply reply, Activity? span)
    {
        if (reply.Status is { Code: not 0 } status)
        {
            // InvalidArgument / FailedPrecondition are the coordinator's fault; Internal is ours.
            _requests.Add(1, status.Code == (int)Grpc.Core.StatusCode.Internal ? Failed : Rejected);
            span?.SetStatus(ActivityStatusCode.Error, status.Message);
            return;
        }
        _requests.Add(1, Ok);
        if (request.Layer < (uint)_layerTags.Length)
        {
            var layer = _layerTags[request.Layer];
            _rows.Add(request.Rows, layer);
            if (reply.Timings is { } t)
            {
                _compute.Record(t.ComputeNanos / 1e9, layer);
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _meter.Dispose();
        ActivitySource.Dispose();
    }
}
