using Distributed.ExpertWorker.Grains;
using Distributed.ExpertWorker.Hosting;
using Distributed.ExpertWorker.Placement;
using Microsoft.Extensions.Options;
using Orleans.Configuration;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace Distributed.Hosting;

/// <summary>Silo-side wiring of the expert cluster.</summary>
public static class ExpertWorkerSiloBuilderExtensions
{
    /// <summary>
    /// Configures membership and link security from <paramref name="cluster"/> and <paramref name="tls"/> (the setup the
    /// coordinator's client shares, <see cref="ExpertClustering"/>), advertises <paramref name="metadata"/> (worker id,
    /// gRPC endpoint, capacity), registers the shard placement director and the placement grain's storage (Redis with Redis membership, the
    /// cluster's PostgreSQL database with ADO.NET membership, after its schema step; silo-local memory otherwise).
    /// </summary>
    public static ISiloBuilder AddExpertShards(this ISiloBuilder silo, ExpertClusterOptions cluster, ClusterCredentials? tls, Dictionary<string, string> metadata)
    {
        ArgumentNullException.ThrowIfNull(silo);
        ArgumentNullException.ThrowIfNull(cluster);
        silo.UseExpertClustering(cluster, tls);
        if (cluster.KubernetesHosting)
        {
            // Applied after the ids/endpoints above, so the pod's labels and IP win (infra/k8s sets both to the same values).
            silo.UseKubernetesHosting();
        }
        silo.UseSiloMetadata(metadata);
        if (cluster.Clustering == ClusteringMode.Redis)
        {
            // Multi-host: the placement plan and its operation log live in the same Redis as the membership, so they
            // survive the loss of whichever silo hosts the placement grain, and coordinator restarts.
            silo.AddRedisGrainStorage(PlacementGrain.StorageName,
                o => o.ConfigurationOptions = ExpertClustering.RedisOptions(cluster));
        }
        else if (cluster.Clustering == ClusteringMode.AdoNet)
        {
            // Multi-host on PostgreSQL: the project's schema is checked (and applied, Cluster:AdoNetApplySchema) before
            // membership starts, and the plan and its operation log live in the same database as the membership.
            silo.ConfigureServices(services =>
            {
                services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp =>
                    new PostgresSchemaStep(cluster, sp, sp.GetRequiredService<ILogger<PostgresSchemaStep>>()));
                services.AddKeyedSingleton<Orleans.Storage.IGrainStorage>(PlacementGrain.StorageName, (sp, _) => new PostgresGrainStorage(
                    PlacementGrain.StorageName, cluster.AdoNetConnectionString!, sp.GetRequiredService<IOptions<ClusterOptions>>().Value.ServiceId,
                    sp.GetRequiredService<Orleans.Storage.IGrainStorageSerializer>()));
            });
        }
        else
        {
            // Embedded default: silo-local memory (survives coordinator restarts and the loss of any other worker).
            silo.ConfigureServices(services => services.AddKeyedSingleton<Orleans.Storage.IGrainStorage>(PlacementGrain.StorageName,
                (sp, _) => new SiloLocalGrainStorage(sp.GetRequiredService<Orleans.Serialization.DeepCopier>())));
        }
        // Loading a shard from a large checkpoint takes longer than the 30 s default call timeout.
        silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMinutes(10));
        silo.ConfigureServices(services =>
        {
            services.AddPlacementDirector<ExpertShardPlacementStrategy, ExpertShardPlacementDirector>();
            services.AddPlacementDirector<PlacementAuthorityStrategy, PlacementAuthorityDirector>();
        });
        return silo;
    }
}
