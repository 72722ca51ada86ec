using Distributed.ExpertWorker.Placement;
using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Grains;

/// <summary>
/// The shard of the worker whose id is this grain's key, activated on that worker's silo
/// (<see cref="ExpertShardPlacementAttribute"/>). It drives the local <see cref="ShardStore"/>: stage (load by memory
/// map, warm), commit, serve, release. No tensor ever passes through it.
/// </summary>
[ExpertShardPlacement]
public sealed class ExpertShardGrain(ShardStore store) : Grain, IExpertShardGrain
{
    /// <inheritdoc />
    public async Task<ShardStatus> ApplyPlanAsync(PlacementPlan plan)
    {
        var shard = ShardFor(plan);
        return await store.ApplyAsync((ulong)plan.Version, shard, CancellationToken.None);
    }

    /// <inheritdoc />
    public async Task<ShardStatus> StagePlanAsync(PlacementPlan plan)
    {
        var shard = ShardFor(plan);
        return await store.StageAsync((ulong)plan.Version, shard, CancellationToken.None);
    }

    /// <inheritdoc />
    public Task<ShardStatus> GetStatusAsync()
    {
        EnsureOwnWorker();
        return Task.FromResult(store.Status);
    }

    /// <inheritdoc />
    public async Task<ShardStatus> ReleaseAsync()
    {
        EnsureOwnWorker();
        return await store.ApplyAsync(store.PlanVersion, Protocol.Contracts.ShardManifest.Empty, CancellationToken.None);
    }

    private Protocol.Contracts.ShardManifest ShardFor(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        EnsureOwnWorker();
        plan.Validate();
        if (plan.Model is { } model && model.Fingerprint != store.Model.Fingerprint)
        {
            throw new ArgumentException($"plan {plan.Version} is for model {model.Fingerprint}, this worker serves {store.Model.Fingerprint}");
        }
        return plan.ShardOf(plan.IndexOf(store.WorkerId));
    }

    private void EnsureOwnWorker()
    {
        string key = this.GetPrimaryKeyString();
        if (key != store.WorkerId)
        {
            throw new InvalidOperationException($"shard grain '{key}' activated on worker '{store.WorkerId}'");
        }
    }
}
