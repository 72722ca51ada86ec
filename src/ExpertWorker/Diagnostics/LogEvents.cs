namespace Distributed.ExpertWorker.Diagnostics;

/// <summary>Event ids of the expert worker's log messages (stable: dashboards filter on them).</summary>
public static class LogEvents
{
    /// <summary>The worker is listening; the line carries the bound data-plane address.</summary>
    public const int WorkerReady = 3000;
    /// <summary>Effective options at startup.</summary>
    public const int EffectiveOptions = 3001;
    /// <summary>A listener on a non-loopback address runs without TLS (<c>--insecure</c>).</summary>
    public const int InsecureListener = 3002;
    /// <summary>The placement capacity the worker reports and where it came from (configured, GPU memory, host memory).</summary>
    public const int Capacity = 3003;
    /// <summary>Where a request's rows are decoded and encoded: on the device from the wire bytes, or on the host.</summary>
    public const int ExpertCompute = 3004;
    /// <summary>A shard applied a plan.</summary>
    public const int ShardApplied = 3010;
    /// <summary>A shard failed to apply a plan.</summary>
    public const int ShardApplyFailed = 3011;
    /// <summary>A shard staged the next plan version.</summary>
    public const int ShardStaged = 3012;
    /// <summary>A shard released the experts of a version it left.</summary>
    public const int ShardRetired = 3013;
    /// <summary>A request was rejected by validation (until protocol 1.2; since then such refusals are
    /// <see cref="DataPlaneRefused"/>, rate limited).</summary>
    public const int RequestRejected = 3020;
    /// <summary>A request failed inside the worker.</summary>
    public const int RequestFailed = 3021;
    /// <summary>A stream ended because of a protocol violation (until protocol 1.1; since then such refusals are
    /// <see cref="DataPlaneRefused"/>).</summary>
    public const int StreamRejected = 3022;
    /// <summary>Handshake accepted.</summary>
    public const int HelloAccepted = 3023;
    /// <summary>A data-plane call was refused (credential, framing, validation); rate limited per kind.</summary>
    public const int DataPlaneRefused = 3024;
    /// <summary>A coordinator's shared ring was attached to its session.</summary>
    public const int RingAttached = 3025;
    /// <summary>An idle session was evicted to make room for a new one.</summary>
    public const int SessionEvicted = 3026;
    /// <summary>The data plane's security settings at startup (credential fingerprint, shared memory).</summary>
    public const int DataPlaneSecurity = 3027;
    /// <summary>The placement grain rebuilt the plan.</summary>
    public const int PlanRebuilt = 3030;
    /// <summary>A worker registered or left.</summary>
    public const int WorkerMembership = 3031;
    /// <summary>A plan change (operation) was staged, committed, rejected or failed.</summary>
    public const int PlanOperation = 3032;
    /// <summary>A coordinator reported a worker unreachable.</summary>
    public const int WorkerUnreachable = 3033;
    /// <summary>The worker agent could not reach the placement grain.</summary>
    public const int AgentRetry = 3040;
    /// <summary>The PostgreSQL cluster schema was found current or applied (AdoNet clustering).</summary>
    public const int ClusterSchema = 3050;
}
