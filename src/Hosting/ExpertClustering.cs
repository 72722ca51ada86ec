using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Orleans.Connections.Security;

namespace Distributed.Hosting;

/// <summary>
/// The one place membership and link security of the expert cluster are configured, for the silos (workers) and the
/// clients (coordinators) alike: Localhost, Redis or ADO.NET membership with the same service and cluster ids, and,
/// with <see cref="ClusterCredentials"/>, mutual TLS on every silo-to-silo and client-to-gateway connection (a peer
/// must present a certificate the cluster CA signed).
/// </summary>
public static class ExpertClustering
{
    /// <summary>Configures a silo's membership, endpoints and link security.</summary>
    public static ISiloBuilder UseExpertClustering(this ISiloBuilder silo, ExpertClusterOptions cluster, ClusterCredentials? tls)
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
                silo.UseRedisClustering(o => o.ConfigurationOptions = RedisOptions(cluster));
                silo.Configure<ClusterOptions>(o => SetIds(o, cluster));
                silo.ConfigureEndpoints(IPAddress.Parse(cluster.AdvertisedAddress), cluster.SiloPort, cluster.GatewayPort, listenOnAnyHostAddress: false);
                break;
            case ClusteringMode.AdoNet:
                silo.UseAdoNetClustering(o =>
                {
                    o.Invariant = cluster.AdoNetInvariant;
                    o.ConnectionString = cluster.AdoNetConnectionString;
                });
                silo.Configure<ClusterOptions>(o => SetIds(o, cluster));
                silo.ConfigureEndpoints(IPAddress.Parse(cluster.AdvertisedAddress), cluster.SiloPort, cluster.GatewayPort, listenOnAnyHostAddress: false);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(cluster), cluster.Clustering, "unknown clustering mode");
        }
        if (tls is not null)
        {
            silo.UseTls(tls.Certificate, o => ConfigureTls(o, tls));
        }
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

    /// <summary>Configures a client's membership (how it finds gateways) and link security.</summary>
    public static IClientBuilder UseExpertClustering(this IClientBuilder client, ExpertClusterOptions cluster, ClusterCredentials? tls)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(cluster);
        switch (cluster.Clustering)
        {
            case ClusteringMode.Localhost:
                client.UseLocalhostClustering(cluster.GatewayPorts, cluster.ServiceId, cluster.ClusterId);
                break;
            case ClusteringMode.Redis:
                client.UseRedisClustering(o => o.ConfigurationOptions = RedisOptions(cluster));
                client.Configure<ClusterOptions>(o => SetIds(o, cluster));
                break;
            case ClusteringMode.AdoNet:
                client.UseAdoNetClustering(o =>
                {
                    o.Invariant = cluster.AdoNetInvariant;
                    o.ConnectionString = cluster.AdoNetConnectionString;
                });
                client.Configure<ClusterOptions>(o => SetIds(o, cluster));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(cluster), cluster.Clustering, "unknown clustering mode");
        }
        if (tls is not null)
        {
            client.UseTls(tls.Certificate, o => ConfigureTls(o, tls));
        }
        // Gateways that vanish are dropped from the list quickly, so a client does not keep dialling a dead worker.
        client.Configure<GatewayOptions>(o => o.GatewayListRefreshPeriod = TimeSpan.FromSeconds(5));
        return client;
    }

    /// <summary>The StackExchange.Redis configuration of <see cref="ExpertClusterOptions.RedisConnectionString"/>.</summary>
    public static StackExchange.Redis.ConfigurationOptions RedisOptions(ExpertClusterOptions cluster)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        return StackExchange.Redis.ConfigurationOptions.Parse(cluster.RedisConnectionString!);
    }

    private static void SetIds(ClusterOptions o, ExpertClusterOptions cluster)
    {
        o.ServiceId = cluster.ServiceId;
        o.ClusterId = cluster.ClusterId;
    }

    private static void ConfigureTls(TlsOptions o, ClusterCredentials tls)
    {
        o.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        o.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        o.RemoteCertificateValidation = (certificate, chain, errors) => tls.ValidatePeer(certificate, chain, errors);
        o.HandshakeTimeout = TimeSpan.FromSeconds(10);
    }
}
