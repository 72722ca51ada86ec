namespace Distributed.Coordinator.Distribution;

/// <summary>Where the dispatcher gets the placement table it routes with.</summary>
public interface IPlacementSource
{
    /// <summary>
    /// The current table, confirmed recently enough to route with.
    /// </summary>
    /// <exception cref="ExpertDispatchException">FailedPrecondition: no plan serves every expert yet, or the plan
    /// could not be confirmed within the staleness bound (the coordinator refuses to dispatch on a stale version).</exception>
    ExpertPlacementTable GetServingTable();
}

/// <summary>A fixed table (workers started with static shards, <c>--workers</c>).</summary>
public sealed class StaticPlacementSource(ExpertPlacementTable table) : IPlacementSource
{
    /// <inheritdoc />
    public ExpertPlacementTable GetServingTable()
    {
        if (!table.CoversAllExperts)
        {
            throw new ExpertDispatchException(Grpc.Core.StatusCode.FailedPrecondition,
                $"the workers' shards (plan {table.Version}) do not cover every expert of every MoE layer");
        }
        return table;
    }
}
