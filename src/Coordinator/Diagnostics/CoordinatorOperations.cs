using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Protocol.Contracts;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Distributed.Coordinator.Diagnostics;

/// <summary>
/// The coordinator's operations surface on the serving host: Prometheus text at <c>/metrics</c>, liveness at
/// <c>/healthz/live</c> (the process answers), readiness at <c>/healthz/ready</c> (the model is loaded and, with
/// distributed experts, the placement plan covers every expert of every MoE layer), and traces exported by OTLP when
/// <see cref="TelemetryOptions.OtlpEndpoint"/> is set. Create one per host; <see cref="Serving.Hosting.ServeHost"/> calls
/// <see cref="AddTo"/>, <see cref="WrapScheduler"/> and <see cref="MapEndpoints"/>.
/// </summary>
public sealed class CoordinatorOperations : IDisposable
{
    /// <summary>Prometheus scrape path.</summary>
    public const string MetricsPath = "/metrics";

    /// <summary>Liveness probe path.</summary>
    public const string LivenessPath = "/healthz/live";

    /// <summary>Readiness probe path.</summary>
    public const string ReadinessPath = "/healthz/ready";

    /// <summary>OpenTelemetry service name of the coordinator.</summary>
    public const string ServiceName = "moe-coordinator";

    private readonly GrpcExpertDispatcher? _dispatcher;

    /// <summary>Creates the instruments and attaches <paramref name="dispatcher"/> (null: experts run in-process).</summary>
    /// <exception cref="ArgumentException"><paramref name="telemetry"/> is invalid (every problem listed).</exception>
    public CoordinatorOperations(TelemetryOptions telemetry, GrpcExpertDispatcher? dispatcher)
    {
        ArgumentNullException.ThrowIfNull(telemetry);
        var errors = telemetry.Validate();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(telemetry));
        }
        Telemetry = telemetry;
        Instruments = new CoordinatorInstruments(telemetry.MaxExpertSeries);
        _dispatcher = dispatcher;
        if (dispatcher is not null)
        {
            dispatcher.Instruments = Instruments;
            try
            {
                var model = dispatcher.Placement.GetServingTable().Model;
                Instruments.AttachPlacement(dispatcher.Placement, model.NumLayers, model.NumExperts);
            }
            catch (ExpertDispatchException)
            {
                // Not serving yet: the plan-dependent metrics appear once the dispatcher is re-attached by the host.
            }
        }
    }

    /// <summary>Settings in force.</summary>
    public TelemetryOptions Telemetry { get; }

    /// <summary>The coordinator's metrics and spans.</summary>
    public CoordinatorInstruments Instruments { get; }

    /// <summary>
    /// Reads <see cref="TelemetryOptions"/> from <c>DISTRIBUTED_Telemetry__*</c> environment variables; the standard
    /// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is used when <c>OtlpEndpoint</c> is not set.
    /// </summary>
    public static TelemetryOptions TelemetryFromEnvironment()
    {
        var configuration = new ConfigurationBuilder().AddEnvironmentVariables(TelemetryOptions.EnvironmentPrefix).Build();
        var options = new TelemetryOptions();
        configuration.GetSection(TelemetryOptions.SectionName).Bind(options);
        if (string.IsNullOrWhiteSpace(options.OtlpEndpoint))
        {
            options.OtlpEndpoint = Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        return options;
    }

    /// <summary>Null when the coordinator can serve; otherwise why not (the readiness probe's message).</summary>
    public string? NotReadyReason()
    {
        if (_dispatcher is null)
        {
            return null;
        }
        try
        {
            var table = _dispatcher.Placement.GetServingTable();
            return table.CoversAllExperts ? null : $"placement plan {table.Version} does not cover every expert";
        }
        catch (ExpertDispatchException ex)
        {
            return ex.Message;
        }
    }

    /// <summary>Registers metrics (Prometheus exporter), health checks and, with an OTLP endpoint, trace export.</summary>
    public void AddTo(WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddSingleton(Instruments);
        builder.Services.AddHealthChecks()
            .AddCheck("live", () => HealthCheckResult.Healthy(), tags: ["live"])
            .AddCheck("ready", () => NotReadyReason() is { } reason ? HealthCheckResult.Unhealthy(reason) : HealthCheckResult.Healthy(), tags: ["ready"]);
        var otel = builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(ServiceName))
            .WithMetrics(m => m.AddMeter(CoordinatorInstruments.MeterName).AddPrometheusExporter());
        if (!string.IsNullOrWhiteSpace(Telemetry.OtlpEndpoint))
        {
            otel.WithTracing(t => t
                .AddSource(CoordinatorInstruments.ActivitySourceName)
                .SetSampler(new ParentBasedSampler(new TraceIdRatioBasedSampler(Telemetry.TraceSampleRatio)))
                .AddOtlpExporter(o => o.Endpoint = new Uri(Telemetry.OtlpEndpoint)));
        }
    }

    /// <summary>Wraps the host's scheduler to measure requests; publishes its queue, batch and KV gauges.</summary>
    public IGenerationScheduler WrapScheduler(IGenerationScheduler scheduler)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        if (scheduler is ContinuousBatchScheduler continuous)
        {
            Instruments.AttachScheduler(() => continuous.Stats);
        }
        return new InstrumentedGenerationScheduler(scheduler, Instruments);
    }

    /// <summary>Maps <see cref="MetricsPath"/>, <see cref="LivenessPath"/> and <see cref="ReadinessPath"/>.</summary>
    public void MapEndpoints(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPrometheusScrapingEndpoint(MetricsPath);
        app.MapHealthChecks(LivenessPath, new HealthCheckOptions { Predicate = c => c.Tags.Contains("live") });
        app.MapHealthChecks(ReadinessPath, new HealthCheckOptions
        {
            Predicate = c => c.Tags.Contains("ready"),
            ResponseWriter = WriteReasonAsync,
        });
    }

    // "Healthy" or "Unhealthy: <reason>" as text/plain: a probe needs only the status code, an operator the reason.
    private static Task WriteReasonAsync(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "text/plain; charset=utf-8";
        string reason = string.Join("; ", report.Entries.Values.Where(e => e.Status != HealthStatus.Healthy).Select(e => e.Description));
        return context.Response.WriteAsync(report.Status == HealthStatus.Healthy ? "Healthy" : $"{report.Status}: {reason}");
    }

    /// <inheritdoc />
    public void Dispose() => Instruments.Dispose();
}
