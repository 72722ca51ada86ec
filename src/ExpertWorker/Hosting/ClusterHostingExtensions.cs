using System.Net;
using Distributed.ExpertWorker.Grains;
using Distributed.ExpertWorker.Placement;
using Distributed.Protocol.Contracts;
using Orleans.Configuration;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace Distributed.Hosting;

/// <summary>Silo-side wiring of the expert cluster.</summary>
public static class ExpertWorkerSiloBuilderExtensions
{
    /// <summary>
    /// Configures membership from <paramref name="cluster"/>, advertises <paramref name="metadata"/> (worker id, gRPC
    /// endpoint, capacity), registers the shard placement director and the placement grain's storage.
    /// </summary>
    public static ISiloBuilder AddExpertShards(this ISiloBuilder silo, ExpertClusterOptions cluster, Dictionary<string, string> metadata)
    {
        ArgumentNullException.ThrowIfNull(silo);
        ArgumentNullException.ThrowIfNull(cluster);
        switch (cluster.Clustering)
        {
            case ClusteringMode.Localhost:
                silo.UseLocalhostClustering(cluster.SiloPort, cluster.GatewayPort,
                    cluster.PrimarySiloPort == 0 ? null : new IPEndPoint(IPAddress.Loopback, cluster.PrimarySiloPort),
                    cluster.ServiceId, cluster.ClusterId);
                break;
            case ClusteringMode.Redis:
                silo.UseRedisClustering(o => o.ConfigurationOptions = StackExchange.Redis.ConfigurationOptions.Parse(cluster.RedisConnectionString!));
                ConfigureIds(silo, cluster);
                break;
            case ClusteringMode.AdoNet:
                silo.UseAdoNetClustering(o =>
                {
                    o.Invariant = cluster.AdoNetInvariant;
                    o.ConnectionString = cluster.AdoNetConnectionString;
                });
                ConfigureIds(silo, cluster);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(cluster), cluster.Clustering, "unknown clustering mode");
        }
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
                o => o.ConfigurationOptions = StackExchange.Redis.ConfigurationOptions.Parse(cluster.RedisConnectionString!));
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
        if (cluster.ProbeTimeout is { } probe)
        {
            // Faster failure detection than Orleans' defaults (tests, small clusters): a silo missing NumMissedProbesLimit
            // probes of ProbeTimeout each is suspected, and declared dead once enough silos vote.
            silo.Configure<ClusterMembershipOptions>(o =>
            {
                o.ProbeTimeout = probe;
                o.NumMissedProbesLimit = cluster.NumMissedProbesLimit;
                o.TableRefreshTimeout = TimeSpan.FromSeconds(Math.Max(1, probe.TotalSeconds * 2));
                o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(Math.Max(1, probe.TotalSeconds * 5));
            });
        }
        return silo;
    }

    private static void ConfigureIds(ISiloBuilder silo, ExpertClusterOptions cluster)
    {
        silo.Configure<Orleans.Configuration.ClusterOptions>(o =>
        {
            o.ServiceId = cluster.ServiceId;
            o.ClusterId = cluster.ClusterId;
        });
        silo.ConfigureEndpoints(IPAddress.Parse(cluster.AdvertisedAddress), cluster.SiloPort, cluster.GatewayPort, listenOnAnyHostAddress: false);
    }
}
