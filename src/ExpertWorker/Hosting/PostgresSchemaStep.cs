using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Grains;
using Distributed.Hosting;
using Orleans.Storage;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// Silo start-up step of <see cref="ClusteringMode.AdoNet"/> clustering: makes sure the database holds the project's
/// schema (<see cref="PostgresClusterSchema.EnsureAsync"/>; applied when <see cref="ExpertClusterOptions.AdoNetApplySchema"/>
/// allows) before the membership provider loads its queries and before the placement plan's storage is used. Runs at
/// <see cref="ServiceLifecycleStage.RuntimeInitialize"/>, ahead of membership (<see cref="ServiceLifecycleStage.RuntimeGrainServices"/>);
/// a failure stops the silo's start, and the worker exits with code 4 and the message (which names the table). Then it
/// warms the placement plan's storage (<see cref="PostgresGrainStorage.WarmUpAsync"/>).
/// </summary>
internal sealed partial class PostgresSchemaStep(ExpertClusterOptions cluster, IServiceProvider services, ILogger<PostgresSchemaStep> logger)
    : ILifecycleParticipant<ISiloLifecycle>
{
    /// <inheritdoc />
    public void Participate(ISiloLifecycle lifecycle)
        => lifecycle.Subscribe(nameof(PostgresSchemaStep), ServiceLifecycleStage.RuntimeInitialize, EnsureAsync);

    private async Task EnsureAsync(CancellationToken cancellationToken)
    {
        var outcome = await PostgresClusterSchema.EnsureAsync(cluster.AdoNetConnectionString!, cluster.AdoNetApplySchema, cancellationToken);
        LogSchema(logger, PostgresClusterSchema.Component, PostgresClusterSchema.Version,
            outcome == ClusterSchemaOutcome.Applied ? "applied" : "already in place");
        // Any silo may have to re-activate the placement grain when its silo dies: have its storage ready.
        if (services.GetKeyedService<IGrainStorage>(PlacementGrain.StorageName) is PostgresGrainStorage storage)
        {
            await storage.WarmUpAsync(cancellationToken);
        }
    }

    [LoggerMessage(EventId = LogEvents.ClusterSchema, Level = LogLevel.Information,
        Message = "PostgreSQL {Component} schema version {Version} {Outcome}")]
    private static partial void LogSchema(ILogger logger, string component, int version, string outcome);
}
