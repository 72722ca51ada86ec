using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Weights;
using Distributed.Hosting;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// The worker's operations surface: <see cref="OperationsEndpoints"/> (metrics, liveness, readiness = the shard serves
/// its plan, warm; OTLP traces) plus the standard <c>grpc.health.v1.Health</c> service on the data-plane port (overall
/// status = readiness).
/// </summary>
public static class WorkerOperations
{
    /// <summary>OpenTelemetry service name of a worker.</summary>
    public const string ServiceName = "moe-expert-worker";

    /// <summary>Registers health checks, the gRPC health service, metrics and (with an endpoint) trace export.</summary>
    public static void Add(WebApplicationBuilder builder, ShardStore store, TelemetryOptions telemetry, string workerId)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(telemetry);
        OperationsEndpoints.Add(builder.Services, telemetry, ServiceName, workerId, ExpertWorkerInstruments.MeterName,
            ExpertWorkerInstruments.ActivitySourceName, () => ExpertWorkerInstruments.NotReadyReason(store.Status));
        builder.Services.AddGrpcHealthChecks(o =>
        {
            // The overall ("") service reflects readiness: a balancer or kubelet gRPC probe sends traffic only to warm shards.
            o.Services.Map("", r => r.Tags.Contains(OperationsEndpoints.ReadyTag));
            o.Services.Map("distributed.expertworker.v1.ExpertWorker", r => r.Tags.Contains(OperationsEndpoints.ReadyTag));
        });
    }

    /// <summary>Maps the <see cref="OperationsEndpoints"/> paths (<c>/metrics</c> guarded by <paramref name="telemetry"/>'s
    /// token) and the gRPC health service.</summary>
    public static void Map(WebApplication app, TelemetryOptions telemetry)
    {
        ArgumentNullException.ThrowIfNull(app);
        OperationsEndpoints.Map(app, telemetry);
        app.MapGrpcHealthChecksService();
    }
}
