namespace Distributed.Protocol.Grains;

/// <summary>
/// The shard of one worker (key = worker id), activated on that worker's silo: it owns the lifecycle of the experts
/// the worker serves (load by memory map, warm, serve, release). Activations never carry tensors.
/// </summary>
[Alias("distributed.IExpertShardGrain")]
public interface IExpertShardGrain : IGrainWithStringKey
{
    /// <summary>Loads what <paramref name="plan"/> assigns to this worker, releases the rest, and serves that version.</summary>
    [Alias("Apply")]
    Task<ShardStatus> ApplyPlanAsync(PlacementPlan plan);

    /// <summary>The shard's state.</summary>
    [Alias("Status")]
    Task<ShardStatus> GetStatusAsync();

    /// <summary>Releases every expert.</summary>
    [Alias("Release")]
    Task<ShardStatus> ReleaseAsync();
}
