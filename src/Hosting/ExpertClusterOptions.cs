namespace Distributed.Hosting;

/// <summary>How silos find each other.</summary>
public enum ClusteringMode
{
    /// <summary>Development clustering on one machine: a primary silo on a known port, no external service.</summary>
    Localhost = 0,
    /// <summary>Redis membership table (<see cref="ExpertClusterOptions.RedisConnectionString"/>).</summary>
    Redis = 1,
    /// <summary>ADO.NET membership table (<see cref="ExpertClusterOptions.AdoNetInvariant"/>, <see cref="ExpertClusterOptions.AdoNetConnectionString"/>).</summary>
    AdoNet = 2,
}

/// <summary>
/// Orleans cluster membership shared by workers (silos) and coordinators (clients). Section <c>Cluster</c>.
/// Both sides must use the same <see cref="ServiceId"/> and <see cref="ClusterId"/> (a mismatch makes the client retry
/// until its start timeout).
/// </summary>
public sealed class ExpertClusterOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Cluster";

    /// <summary>Membership provider. Default: <see cref="ClusteringMode.Localhost"/>.</summary>
    public ClusteringMode Clustering { get; set; } = ClusteringMode.Localhost;

    /// <summary>Orleans service id. Default: <c>distributed-moe</c>.</summary>
    public string ServiceId { get; set; } = "distributed-moe";

    /// <summary>Orleans cluster id. Default: <c>dev</c>.</summary>
    public string ClusterId { get; set; } = "dev";

    /// <summary>Silo-to-silo TCP port of this silo. Default: 11111.</summary>
    public int SiloPort { get; set; } = 11111;

    /// <summary>Client gateway TCP port of this silo. Default: 30000.</summary>
    public int GatewayPort { get; set; } = 30000;

    /// <summary>Address this silo advertises to others (Redis/ADO.NET clustering). Default: 127.0.0.1.</summary>
    public string AdvertisedAddress { get; set; } = "127.0.0.1";

    /// <summary>Localhost clustering: silo port of the primary silo; 0 means this silo is the primary. Default: 0.</summary>
    public int PrimarySiloPort { get; set; }

    /// <summary>Localhost clustering, clients: gateway ports on 127.0.0.1 to connect to. Default: 30000.</summary>
    public int[] GatewayPorts { get; set; } = [30000];

    /// <summary>Redis connection string (e.g. <c>127.0.0.1:6379</c>). Required for <see cref="ClusteringMode.Redis"/>. Secret: never logged.</summary>
    public string? RedisConnectionString { get; set; }

    /// <summary>ADO.NET provider invariant name; only <c>Npgsql</c> (PostgreSQL) is supported. Default: <c>Npgsql</c>.</summary>
    public string AdoNetInvariant { get; set; } = "Npgsql";

    /// <summary>ADO.NET connection string. Required for <see cref="ClusteringMode.AdoNet"/>. Secret: never logged.</summary>
    public string? AdoNetConnectionString { get; set; }

    /// <summary>
    /// Silos with <see cref="ClusteringMode.AdoNet"/>: at start-up, create or upgrade the project's PostgreSQL schema
    /// (<see cref="PostgresClusterSchema"/>: membership tables and queries, the placement plan's table) when the database
    /// does not hold this build's version yet. Idempotent and safe when several workers start at once (one transaction
    /// under an advisory lock). Once the schema is in place nothing is changed, so a user without DDL rights can start
    /// either way. When false the worker only checks the schema version and exits (code 4, naming the table) if it is
    /// missing or older: for operators who apply <c>--print-schema</c> themselves. Default: true.
    /// </summary>
    public bool AdoNetApplySchema { get; set; } = true;

    /// <summary>
    /// Silos: run under Orleans' Kubernetes hosting (silo name = pod name, advertised address = pod IP, ids from the
    /// pod's <c>orleans/serviceId</c> and <c>orleans/clusterId</c> labels, silos of deleted pods removed from membership).
    /// Needs the POD_NAME, POD_NAMESPACE and POD_IP environment variables and RBAC to watch pods. Membership still
    /// comes from <see cref="Clustering"/>. Default: false.
    /// </summary>
    public bool KubernetesHosting { get; set; }

    /// <summary>How long a client waits to connect to the cluster before failing. Default: 30 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Silos: Orleans membership probe timeout; null keeps Orleans' default (5 s). Smaller values detect a dead
    /// silo sooner (about <see cref="NumMissedProbesLimit"/> × this). Default: null.</summary>
    public TimeSpan? ProbeTimeout { get; set; }

    /// <summary>Silos: missed probes before a silo is suspected (with <see cref="ProbeTimeout"/>). Default: 3.</summary>
    public int NumMissedProbesLimit { get; set; } = 3;

    /// <summary>Every problem with these options (empty when valid); each message names its field.</summary>
    public IReadOnlyList<string> Validate(bool isSilo)
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(ServiceId))
        {
            errors.Add("Cluster:ServiceId must not be empty");
        }
        if (string.IsNullOrWhiteSpace(ClusterId))
        {
            errors.Add("Cluster:ClusterId must not be empty");
        }
        if (!Enum.IsDefined(Clustering))
        {
            errors.Add($"Cluster:Clustering {(int)Clustering} is not Localhost, Redis or AdoNet");
        }
        if (isSilo)
        {
            if (SiloPort is <= 0 or > 65535)
            {
                errors.Add($"Cluster:SiloPort {SiloPort} is not a TCP port");
            }
            if (GatewayPort is <= 0 or > 65535)
            {
                errors.Add($"Cluster:GatewayPort {GatewayPort} is not a TCP port");
            }
            if (SiloPort == GatewayPort)
            {
                errors.Add("Cluster:SiloPort and Cluster:GatewayPort must differ");
            }
            if (!System.Net.IPAddress.TryParse(AdvertisedAddress, out _))
            {
                errors.Add($"Cluster:AdvertisedAddress '{AdvertisedAddress}' is not an IP address");
            }
            if (PrimarySiloPort is < 0 or > 65535)
            {
                errors.Add($"Cluster:PrimarySiloPort {PrimarySiloPort} is not a TCP port (0 = this silo is the primary)");
            }
        }
        else if (Clustering == ClusteringMode.Localhost && (GatewayPorts is null || GatewayPorts.Length == 0 || GatewayPorts.Any(p => p is <= 0 or > 65535)))
        {
            errors.Add("Cluster:GatewayPorts must list at least one TCP port");
        }
        if (Clustering == ClusteringMode.Redis && string.IsNullOrWhiteSpace(RedisConnectionString))
        {
            errors.Add("Cluster:RedisConnectionString is required when Cluster:Clustering is Redis");
        }
        if (Clustering == ClusteringMode.AdoNet && (string.IsNullOrWhiteSpace(AdoNetConnectionString) || string.IsNullOrWhiteSpace(AdoNetInvariant)))
        {
            errors.Add("Cluster:AdoNetConnectionString and Cluster:AdoNetInvariant are required when Cluster:Clustering is AdoNet");
        }
        else if (Clustering == ClusteringMode.AdoNet && !string.Equals(AdoNetInvariant, "Npgsql", StringComparison.Ordinal))
        {
            // The bundled ADO.NET provider, the schema (PostgresClusterSchema) and the placement plan's storage are PostgreSQL's.
            errors.Add($"Cluster:AdoNetInvariant '{AdoNetInvariant}' is not supported: AdoNet clustering runs on PostgreSQL (invariant Npgsql)");
        }
        if (ProbeTimeout is { } probe && (probe < TimeSpan.FromMilliseconds(100) || probe > TimeSpan.FromMinutes(1)))
        {
            errors.Add($"Cluster:ProbeTimeout {probe} must be within [100 ms, 1 min]");
        }
        if (NumMissedProbesLimit is < 1 or > 10)
        {
            errors.Add($"Cluster:NumMissedProbesLimit {NumMissedProbesLimit} must be within [1, 10]");
        }
        if (ConnectTimeout <= TimeSpan.Zero)
        {
            errors.Add($"Cluster:ConnectTimeout {ConnectTimeout} must be positive");
        }
        return errors;
    }
}
