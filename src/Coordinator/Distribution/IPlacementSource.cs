namespace Distributed.Coordinator.Distribution;

/// <summary>Where the dispatcher gets the placement table it routes with, and how it recovers when workers fail.</summary>
public interface IPlacementSource
{
    /// <summary>
    /// The current table, confirmed recently enough to route with.
    /// </summary>
    /// <exception cref="ExpertDispatchException">FailedPrecondition: no plan serves every expert yet, or the plan
    /// could not be confirmed within the staleness bound (the coordinator refuses to dispatch on a stale version).</exception>
    ExpertPlacementTable GetServingTable();

    /// <summary>Null while a table serving every expert is available; otherwise why not (the readiness probe's message).</summary>
    string? NotReadyReason()
    {
        try
        {
            var table = GetServingTable();
            return table.CoversAllExperts ? null : $"placement plan {table.Version} does not cover every expert";
        }
        catch (ExpertDispatchException ex)
        {
            return ex.Message;
        }
    }

    /// <summary>
    /// A serving table, waiting up to <paramref name="timeout"/> when none serves right now but one did before (a plan
    /// change or a repair in progress); refuses at once when none ever served.
    /// </summary>
    /// <exception cref="ExpertDispatchException">FailedPrecondition: nothing serves (see <see cref="GetServingTable"/>).</exception>
    ValueTask<ExpertPlacementTable> GetServingTableAsync(TimeSpan timeout, CancellationToken cancellationToken) => ValueTask.FromResult(GetServingTable());

    /// <summary>True when <see cref="RecoverAsync"/> can re-place experts (a placement authority exists).</summary>
    bool CanRecover => false;

    /// <summary>
    /// Workers of table version <paramref name="failedVersion"/> could not be reached on the data plane. Returns a
    /// table to retry with: a newer plan that re-placed their experts, or the same table when every one of them proved
    /// alive (listed in <see cref="PlacementRecovery.AliveWorkers"/>; reconnect and retry).
    /// </summary>
    /// <exception cref="ExpertDispatchException">Unavailable: no plan serving every expert without them appeared (some
    /// expert cannot be placed, or the placement authority did not answer) within the recovery timeout.</exception>
    ValueTask<PlacementRecovery> RecoverAsync(IReadOnlyCollection<string> unreachableWorkers, ulong failedVersion, string reason, CancellationToken cancellationToken)
        => throw new ExpertDispatchException(Grpc.Core.StatusCode.Unavailable,
            $"worker(s) {string.Join(", ", unreachableWorkers)} unreachable ({reason}) and this placement cannot re-place experts: {GetType().Name} is fixed",
            unreachableWorkers.FirstOrDefault());

    /// <summary>Tells the placement authority, without waiting, that a worker failed on the data plane (a replica took over).</summary>
    void ReportUnreachable(string workerId, string reason)
    {
    }

    /// <summary>A table newer than <paramref name="version"/> (a worker refused the version as stale), or the current one
    /// after <paramref name="timeout"/>.</summary>
    ValueTask<ExpertPlacementTable> WaitForNewerAsync(ulong version, TimeSpan timeout, CancellationToken cancellationToken)
        => ValueTask.FromResult(GetServingTable());
}

/// <summary>What <see cref="IPlacementSource.RecoverAsync"/> found.</summary>
/// <param name="Table">The table to retry with.</param>
/// <param name="AliveWorkers">Reported workers that proved alive (the data-plane failure was transient).</param>
public sealed record PlacementRecovery(ExpertPlacementTable Table, IReadOnlyCollection<string> AliveWorkers);

/// <summary>A fixed table (workers started with static shards, <c>--workers</c>): replicas are used, nothing is re-placed.</summary>
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
