namespace Distributed.Protocol.Grains;

/// <summary>
/// The shard of one worker (key = worker id), activated on that worker's silo: it owns the lifecycle of the experts
/// the worker serves (load by memory map, warm, serve, release). Activations never carry tensors.
/// </summary>
[Alias("distributed.IExpertShardGrain")]
public interface IExpertShardGrain : IGrainWithStringKey
{
    /// <summary>Commits <paramref name="plan"/>: loads what it assigns to this worker (if not staged already) and serves
    /// that version; what the plan no longer assigns is released after the worker's retire delay.</summary>
    [Alias("Apply")]
    Task<ShardStatus> ApplyPlanAsync(PlacementPlan plan);

    /// <summary>Stages <paramref name="plan"/>: loads and warms what it assigns to this worker while the committed version
    /// keeps serving; from then on requests routed with either version are accepted. Nothing is released.</summary>
    [Alias("Stage")]
    Task<ShardStatus> StagePlanAsync(PlacementPlan plan);

    /// <summary>The shard's state.</summary>
    [Alias("Status")]
    Task<ShardStatus> GetStatusAsync();

    /// <summary>Releases every expert.</summary>
    [Alias("Release")]
    Task<ShardStatus> ReleaseAsync();
}
