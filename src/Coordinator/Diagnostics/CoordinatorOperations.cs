using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Hosting;

namespace Distributed.Coordinator.Diagnostics;

/// <summary>
/// The coordinator's operations surface on the serving host (<see cref="OperationsEndpoints"/>: metrics, liveness,
/// readiness, OTLP traces); ready means the model is loaded and, with distributed experts, the placement plan covers
/// every expert of every MoE layer. Create one per host; <see cref="Serving.Hosting.ServeHost"/> calls
/// <see cref="AddTo"/>, <see cref="WrapScheduler"/> and <see cref="MapEndpoints"/>.
/// </summary>
public sealed class CoordinatorOperations : IDisposable
{
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
        return _dispatcher?.Placement.NotReadyReason();
    }

    /// <summary>Registers metrics (Prometheus exporter), health checks and, with an OTLP endpoint, trace export.</summary>
    public void AddTo(WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddSingleton(Instruments);
        OperationsEndpoints.Add(builder.Services, Telemetry, ServiceName, serviceInstanceId: null,
            CoordinatorInstruments.MeterName, CoordinatorInstruments.ActivitySourceName, NotReadyReason);
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

    /// <summary>Maps the <see cref="OperationsEndpoints"/> paths (<c>/metrics</c> guarded by the telemetry options' token).</summary>
    public void MapEndpoints(WebApplication app) => OperationsEndpoints.Map(app, Telemetry);

    /// <inheritdoc />
    public void Dispose() => Instruments.Dispose();
}
