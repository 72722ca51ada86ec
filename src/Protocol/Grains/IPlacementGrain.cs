using Orleans.Concurrency;

namespace Distributed.Protocol.Grains;

/// <summary>
/// The cluster's placement authority (one activation, key <see cref="ClusterKey"/>): it keeps the registered workers,
/// builds versioned plans balanced by expert count and memory, stages every change (workers load and warm first), then
/// commits it, persists the plan, and tracks which workers serve it. Tensors never pass through it.
/// </summary>
[Alias("distributed.IPlacementGrain")]
public interface IPlacementGrain : IGrainWithIntegerKey
{
    /// <summary>The key of the cluster's placement grain.</summary>
    const long ClusterKey = 0;

    /// <summary>Adds or refreshes a worker. It is placed once registrations settle (or held, per configuration).</summary>
    /// <exception cref="ArgumentException">The worker serves another model than the cluster, or a field is invalid.</exception>
    [Alias("Register")]
    Task<PlacementSnapshot> RegisterWorkerAsync(WorkerDescriptor worker);

    /// <summary>Removes a worker (shutdown); its experts without another copy are re-placed on the others.</summary>
    [Alias("Unregister")]
    Task UnregisterWorkerAsync(string workerId);

    /// <summary>The current plan and readiness.</summary>
    [Alias("Get")]
    Task<PlacementSnapshot> GetSnapshotAsync();

    /// <summary>Returns as soon as the snapshot's generation differs from <paramref name="knownGeneration"/>, or after
    /// <paramref name="maxWait"/> with the unchanged snapshot.</summary>
    [Alias("Wait"), AlwaysInterleave]
    Task<PlacementSnapshot> WaitForChangeAsync(long knownGeneration, TimeSpan maxWait);

    /// <summary>A worker's shard reports its state (committed version, staged version, failure).</summary>
    [Alias("Report")]
    Task ReportShardStatusAsync(ShardStatus status);

    /// <summary>
    /// A coordinator could not reach <paramref name="workerId"/> on the data plane (connection lost or deadline passed).
    /// The grain confirms through membership or a short probe of the worker's shard grain; a confirmed loss removes the
    /// worker at once and stages a repair plan that re-places its experts on the survivors.
    /// </summary>
    [Alias("Unreachable")]
    Task<UnreachableVerdict> ReportUnreachableAsync(string workerId, string reason);

    /// <summary>Registered workers with their state, silo status and last shard report, plus the snapshot.</summary>
    [Alias("Cluster")]
    Task<ClusterView> GetClusterAsync();

    /// <summary>Moves every expert of <paramref name="workerId"/> to other workers; once committed the worker holds
    /// nothing and is safe to stop. Refused (nothing changes) for an unknown worker or when some expert has no other room.</summary>
    [Alias("Drain")]
    Task<PlanChangeResult> DrainWorkerAsync(string workerId);

    /// <summary>Adds or removes replicas (all or nothing).</summary>
    [Alias("Replicas")]
    Task<PlanChangeResult> ChangeReplicasAsync(ReplicaChange[] changes);

    /// <summary>Recomputes placement from measured load (replicate hot experts, pack by load and memory); a dry run only proposes.</summary>
    [Alias("Rebalance")]
    Task<PlanChangeResult> RebalanceAsync(RebalanceRequest request);

    /// <summary>A plan change by id, or null when unknown (the grain remembers the most recent 256).</summary>
    [Alias("Operation")]
    Task<PlacementOperation?> GetOperationAsync(string operationId);
}
