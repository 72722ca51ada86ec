using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Contracts;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// The worker's operations surface: Prometheus text at <c>/metrics</c>, <c>/healthz/live</c> (the process answers),
/// <c>/healthz/ready</c> (the shard serves its plan, warm; 503 with the reason otherwise), the standard
/// <c>grpc.health.v1.Health</c> service on the data-plane port (overall status = readiness), and traces exported by
/// OTLP when <see cref="TelemetryOptions.OtlpEndpoint"/> is set.
/// </summary>
public static class WorkerOperations
{
    /// <summary>Prometheus scrape path.</summary>
    public const string MetricsPath = "/metrics";

    /// <summary>Liveness probe path.</summary>
    public const string LivenessPath = "/healthz/live";

    /// <summary>Readiness probe path.</summary>
    public const string ReadinessPath = "/healthz/ready";

    /// <summary>OpenTelemetry service name of a worker.</summary>
    public const string ServiceName = "moe-expert-worker";

    /// <summary>Registers health checks, the gRPC health service, metrics and (with an endpoint) trace export.</summary>
    public static void Add(WebApplicationBuilder builder, ShardStore store, TelemetryOptions telemetry, string workerId)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(telemetry);
        builder.Services.AddHealthChecks()
            .AddCheck("live", () => HealthCheckResult.Healthy(), tags: ["live"])
            .AddCheck("ready", () => ExpertWorkerInstruments.NotReadyReason(store.Status) is { } reason
                ? HealthCheckResult.Unhealthy(reason)
                : HealthCheckResult.Healthy(), tags: ["ready"]);
        builder.Services.AddGrpcHealthChecks(o =>
        {
            // The overall ("") service reflects readiness: a balancer or kubelet gRPC probe sends traffic only to warm shards.
            o.Services.Map("", r => r.Tags.Contains("ready"));
            o.Services.Map("distributed.expertworker.v1.ExpertWorker", r => r.Tags.Contains("ready"));
        });
        var otel = builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(ServiceName, serviceInstanceId: workerId))
            .WithMetrics(m => m.AddMeter(ExpertWorkerInstruments.MeterName).AddPrometheusExporter());
        if (!string.IsNullOrWhiteSpace(telemetry.OtlpEndpoint))
        {
            otel.WithTracing(t => t
                .AddSource(ExpertWorkerInstruments.ActivitySourceName)
                .SetSampler(new ParentBasedSampler(new TraceIdRatioBasedSampler(telemetry.TraceSampleRatio)))
                .AddOtlpExporter(o => o.Endpoint = new Uri(telemetry.OtlpEndpoint)));
        }
    }

    /// <summary>Maps the HTTP endpoints and the gRPC health service.</summary>
    public static void Map(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPrometheusScrapingEndpoint(MetricsPath);
        app.MapHealthChecks(LivenessPath, new HealthCheckOptions { Predicate = c => c.Tags.Contains("live") });
        app.MapHealthChecks(ReadinessPath, new HealthCheckOptions { Predicate = c => c.Tags.Contains("ready"), ResponseWriter = WriteReasonAsync });
        app.MapGrpcHealthChecksService();
    }

    // "Healthy" or "Unhealthy: <reason>": a probe needs only the status code, an operator the reason.
    private static Task WriteReasonAsync(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "text/plain; charset=utf-8";
        string reason = string.Join("; ", report.Entries.Values.Where(e => e.Status != HealthStatus.Healthy).Select(e => e.Description));
        return context.Response.WriteAsync(report.Status == HealthStatus.Healthy ? "Healthy" : $"{report.Status}: {reason}");
    }
}
