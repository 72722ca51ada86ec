using Orleans.Concurrency;

namespace Distributed.Protocol.Grains;

/// <summary>
/// The cluster's placement authority (one activation, key <see cref="ClusterKey"/>): it keeps the registered workers,
/// builds a versioned plan balanced by expert count and memory, persists it, and tracks which workers serve it.
/// Tensors never pass through it.
/// </summary>
[Alias("distributed.IPlacementGrain")]
public interface IPlacementGrain : IGrainWithIntegerKey
{
    /// <summary>The key of the cluster's placement grain.</summary>
    const long ClusterKey = 0;

    /// <summary>Adds or refreshes a worker. The plan is rebuilt once registrations settle.</summary>
    /// <exception cref="ArgumentException">The worker serves another model than the cluster, or a field is invalid.</exception>
    [Alias("Register")]
    Task<PlacementSnapshot> RegisterWorkerAsync(WorkerDescriptor worker);

    /// <summary>Removes a worker (drain or shutdown); the plan is rebuilt without it.</summary>
    [Alias("Unregister")]
    Task UnregisterWorkerAsync(string workerId);

    /// <summary>The current plan and readiness.</summary>
    [Alias("Get")]
    Task<PlacementSnapshot> GetSnapshotAsync();

    /// <summary>Returns as soon as the snapshot's generation differs from <paramref name="knownGeneration"/>, or after
    /// <paramref name="maxWait"/> with the unchanged snapshot.</summary>
    [Alias("Wait"), AlwaysInterleave]
    Task<PlacementSnapshot> WaitForChangeAsync(long knownGeneration, TimeSpan maxWait);

    /// <summary>A worker's shard reports its state for a plan version.</summary>
    [Alias("Report")]
    Task ReportShardStatusAsync(ShardStatus status);
}
