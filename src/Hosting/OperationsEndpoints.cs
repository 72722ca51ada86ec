using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Distributed.Hosting;

/// <summary>
/// The operations surface both executables serve: Prometheus text at <see cref="MetricsPath"/>, liveness at
/// <see cref="LivenessPath"/> (the process answers), readiness at <see cref="ReadinessPath"/> (200, or 503 with
/// <c>Unhealthy: &lt;reason&gt;</c>), and traces exported by OTLP when <see cref="TelemetryOptions.OtlpEndpoint"/> is set.
/// </summary>
public static class OperationsEndpoints
{
    /// <summary>Prometheus scrape path.</summary>
    public const string MetricsPath = "/metrics";

    /// <summary>Liveness probe path.</summary>
    public const string LivenessPath = "/healthz/live";

    /// <summary>Readiness probe path.</summary>
    public const string ReadinessPath = "/healthz/ready";

    /// <summary>Health-check tag of the readiness check (also what a gRPC health service can map to).</summary>
    public const string ReadyTag = "ready";

    private const string LiveTag = "live";

    /// <summary>
    /// Registers the liveness and readiness checks (<paramref name="notReadyReason"/>: null when ready, else why not),
    /// the metrics of <paramref name="meterName"/> with the Prometheus exporter, and with an OTLP endpoint the traces of
    /// <paramref name="activitySourceName"/> sampled at <see cref="TelemetryOptions.TraceSampleRatio"/>.
    /// </summary>
    public static void Add(IServiceCollection services, TelemetryOptions telemetry, string serviceName, string? serviceInstanceId,
        string meterName, string activitySourceName, Func<string?> notReadyReason)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(telemetry);
        ArgumentNullException.ThrowIfNull(notReadyReason);
        services.AddHealthChecks()
            .AddCheck(LiveTag, () => HealthCheckResult.Healthy(), tags: [LiveTag])
            .AddCheck(ReadyTag, () => notReadyReason() is { } reason ? HealthCheckResult.Unhealthy(reason) : HealthCheckResult.Healthy(), tags: [ReadyTag]);
        var otel = services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(serviceName, serviceInstanceId: serviceInstanceId))
            .WithMetrics(m => m.AddMeter(meterName).AddPrometheusExporter());
        if (!string.IsNullOrWhiteSpace(telemetry.OtlpEndpoint))
        {
            otel.WithTracing(t => t
                .AddSource(activitySourceName)
                .SetSampler(new ParentBasedSampler(new TraceIdRatioBasedSampler(telemetry.TraceSampleRatio)))
                .AddOtlpExporter(o => o.Endpoint = new Uri(telemetry.OtlpEndpoint)));
        }
    }

    /// <summary>
    /// Maps <see cref="MetricsPath"/> (guarded by <see cref="MetricsAccess"/> with the token of
    /// <paramref name="telemetry"/>), <see cref="LivenessPath"/> and <see cref="ReadinessPath"/> (open: probes).
    /// </summary>
    public static void Map(IEndpointRouteBuilder app, TelemetryOptions telemetry)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(telemetry);
        var access = new MetricsAccess(telemetry.ResolveMetricsToken());
        app.MapPrometheusScrapingEndpoint(MetricsPath).Add(endpoint =>
        {
            var scrape = endpoint.RequestDelegate ?? throw new InvalidOperationException("the Prometheus endpoint has no request delegate");
            endpoint.RequestDelegate = context => access.Check(context.Request.Headers.Authorization, context.Connection.RemoteIpAddress) switch
            {
                MetricsAccess.Decision.Allowed => scrape(context),
                var refused => access.RefuseAsync(context, refused),
            };
        });
        app.MapHealthChecks(LivenessPath, new HealthCheckOptions { Predicate = c => c.Tags.Contains(LiveTag) });
        app.MapHealthChecks(ReadinessPath, new HealthCheckOptions { Predicate = c => c.Tags.Contains(ReadyTag), ResponseWriter = WriteReasonAsync });
    }

    // "Healthy" or "Unhealthy: <reason>" as text/plain: a probe needs only the status code, an operator the reason.
    private static Task WriteReasonAsync(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "text/plain; charset=utf-8";
        string reason = string.Join("; ", report.Entries.Values.Where(e => e.Status != HealthStatus.Healthy).Select(e => e.Description));
        return context.Response.WriteAsync(report.Status == HealthStatus.Healthy ? "Healthy" : $"{report.Status}: {reason}");
    }
}
