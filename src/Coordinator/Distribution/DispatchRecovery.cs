using Grpc.Core;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Retry and recovery of <see cref="GrpcExpertDispatcher"/>: records a lost worker (suspected, its slices to be re-sent),
/// and before each retry round decides the table to re-send under:
/// <list type="bullet">
/// <item>a worker was lost and some failed expert has no healthy holder left under the same plan: the placement source
/// re-places the lost workers' experts (<see cref="IPlacementSource.RecoverAsync"/>); workers that proved alive are
/// no longer suspected; a fixed placement cannot recover, so the worker's own failure is the answer;</item>
/// <item>a worker refused the plan version as stale: wait for a newer table (up to the dispatch timeout);</item>
/// <item>otherwise the same table (the slices go to another healthy holder).</item>
/// </list>
/// Every lost worker is reported to the placement source without waiting.
/// </summary>
public sealed partial class DispatchRecovery
{
    private readonly IPlacementSource _placement;
    private readonly WorkerSuspicion _suspicion;
    private readonly DistributionOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private long _resentSlices;
    private long _recoveries;
    private long _lastLossTimestamp;
    private long _lastRecoveryTimestamp;

    /// <summary>Creates the recovery policy.</summary>
    public DispatchRecovery(IPlacementSource placement, WorkerSuspicion suspicion, DistributionOptions options, TimeProvider time, ILogger logger)
    {
        _placement = placement ?? throw new ArgumentNullException(nameof(placement));
        _suspicion = suspicion ?? throw new ArgumentNullException(nameof(suspicion));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _time = time ?? throw new ArgumentNullException(nameof(time));
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
    }

    /// <summary>Slices re-sent after a worker failed or refused a stale plan version.</summary>
    public long ResentSlices => Interlocked.Read(ref _resentSlices);

    /// <summary>Times the placement source was asked to re-place the experts of unreachable workers.</summary>
    public long Recoveries => Interlocked.Read(ref _recoveries);

    /// <summary><see cref="TimeProvider.GetTimestamp"/> when a worker was last found lost (0 = never).</summary>
    public long LastLossTimestamp => Interlocked.Read(ref _lastLossTimestamp);

    /// <summary><see cref="TimeProvider.GetTimestamp"/> when a recovery last returned a plan to retry with (0 = never).</summary>
    public long LastRecoveryTimestamp => Interlocked.Read(ref _lastRecoveryTimestamp);

    /// <summary>Failures a retry on another worker or plan can fix: the worker is gone, late, or its call was cut.</summary>
    public static bool IsWorkerLoss(StatusCode status) => status is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.Cancelled or StatusCode.Aborted;

    /// <summary>Records that <paramref name="worker"/> of <paramref name="table"/> failed with <paramref name="ex"/>:
    /// suspected, its <paramref name="slices"/> queued for the next round.</summary>
    internal void Lose(GrpcDispatchHandle dispatch, ExpertPlacementTable table, WorkerEndpoint worker, IEnumerable<RowSlice> slices, ExpertDispatchException ex)
    {
        _suspicion.Suspect(table.Version, worker);
        Interlocked.Exchange(ref _lastLossTimestamp, _time.GetTimestamp());
        if (!dispatch.Lost.Contains(worker))
        {
            dispatch.Lost.Add(worker);
        }
        dispatch.Failed.AddRange(slices);
        dispatch.LastFailure = ex;
        LogWorkerLost(dispatch.Layer, worker.WorkerId, worker.Endpoint, ex.Status, ex.Message);
    }

    /// <summary>Takes the failed slices of <paramref name="dispatch"/> and returns the table to re-send them under.</summary>
    /// <exception cref="ExpertDispatchException">No holder left and no re-placement possible (the worker's failure), or
    /// the recovery failed.</exception>
    internal async Task<(ExpertPlacementTable Table, List<RowSlice> Slices)> PrepareRetryAsync(GrpcDispatchHandle dispatch, CancellationToken cancellationToken)
    {
        var failed = dispatch.Failed.ToList();
        dispatch.Failed.Clear();
        var lost = dispatch.Lost.ToList();
        dispatch.Lost.Clear();
        bool stale = dispatch.Stale;
        dispatch.Stale = false;
        var version = dispatch.TableVersion;
        var table = _placement.GetServingTable();
        if (table.Version == version && lost.Count > 0 && failed.Any(s => !HasHealthyOwner(table, dispatch.Layer, s.Expert)))
        {
            if (!_placement.CanRecover)
            {
                throw dispatch.LastFailure!;
            }
            Interlocked.Increment(ref _recoveries);
            long r0 = _time.GetTimestamp();
            var recovery = await _placement.RecoverAsync(lost.Select(w => w.WorkerId).ToList(), version, dispatch.LastFailure?.Message ?? "unreachable",
                cancellationToken).ConfigureAwait(false);
            foreach (var w in lost.Where(l => recovery.AliveWorkers.Contains(l.WorkerId)))
            {
                _suspicion.Clear(w);
            }
            table = recovery.Table;
            Interlocked.Exchange(ref _lastRecoveryTimestamp, _time.GetTimestamp());
            LogRecovered(dispatch.Layer, string.Join(", ", lost.Select(w => w.WorkerId)), version, table.Version, _time.GetElapsedTime(r0).TotalMilliseconds);
        }
        else if (stale && table.Version == version)
        {
            table = await _placement.WaitForNewerAsync(version, _options.DispatchTimeout, cancellationToken).ConfigureAwait(false);
        }
        foreach (var w in lost)
        {
            _placement.ReportUnreachable(w.WorkerId, dispatch.LastFailure?.Message ?? "unreachable");
        }
        Interlocked.Add(ref _resentSlices, failed.Count);
        return (table, failed);
    }

    private bool HasHealthyOwner(ExpertPlacementTable table, int layer, int expert)
    {
        foreach (int w in table.OwnersOf(layer, expert))
        {
            if (!_suspicion.IsSuspect(table, w))
            {
                return true;
            }
        }
        return false;
    }

    [LoggerMessage(EventId = 3120, Level = LogLevel.Warning,
        Message = "MoE layer {LayerId}: worker {WorkerId} at {Endpoint} lost ({Status}): {Reason}; its rows will be re-sent")]
    private partial void LogWorkerLost(int layerId, string workerId, string endpoint, StatusCode status, string reason);

    [LoggerMessage(EventId = 3121, Level = LogLevel.Warning,
        Message = "MoE layer {LayerId}: experts of {WorkerIds} re-placed (plan {FromVersion} -> {ToVersion}) in {ElapsedMs:F0} ms")]
    private partial void LogRecovered(int layerId, string workerIds, ulong fromVersion, ulong toVersion, double elapsedMs);
}
