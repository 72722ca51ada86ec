using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Grains;

namespace Distributed.Coordinator.Admin;

/// <summary>
/// The admin operations behind both the REST and the gRPC API (thin: validate → placement grain / dispatcher
/// statistics → records). Reads come from the placement grain (workers, plan, operations), each worker's shard grain
/// (resident memory, asked live with a short timeout) and this coordinator's dispatcher (routed load, per-worker
/// data-plane figures). Changes are staged by the placement grain and return an operation to follow. Every refusal is
/// an <see cref="AdminException"/> and changes nothing.
/// </summary>
/// <param name="placement">The placement follower (Orleans client).</param>
/// <param name="dispatcher">The dispatcher whose statistics the load view reports.</param>
/// <param name="serving">This coordinator's scheduler counters, or null while it has none (not serving, or not started yet).</param>
/// <param name="timeProvider">The clock of operation waits (the system clock when null).</param>
public sealed class ClusterAdmin(ClusterPlacementFollower placement, GrpcExpertDispatcher dispatcher, Func<Serving.Scheduling.SchedulerStats?>? serving = null,
    TimeProvider? timeProvider = null)
{
    private static readonly TimeSpan ShardProbe = TimeSpan.FromSeconds(1);
    private readonly long _started = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>The placement follower (Orleans client).</summary>
    public ClusterPlacementFollower Placement => placement;

    /// <summary>The dispatcher whose statistics the load view reports.</summary>
    public GrpcExpertDispatcher Dispatcher => dispatcher;

    /// <summary>Workers and plan state.</summary>
    public async Task<ClusterInfo> GetClusterAsync(CancellationToken cancellationToken)
    {
        var view = await CallAsync(() => placement.PlacementGrain.GetClusterAsync(), cancellationToken).ConfigureAwait(false);
        var live = await Task.WhenAll(view.Workers.Select(async w =>
        {
            try
            {
                return (ShardStatus?)await placement.ClusterClient.GetGrain<IExpertShardGrain>(w.Descriptor.WorkerId).GetStatusAsync()
                    .WaitAsync(ShardProbe, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                return null;
            }
        })).ConfigureAwait(false);
        var workers = view.Workers.Select((w, i) =>
        {
            var status = live[i] ?? w.LastStatus;
            bool healthy = live[i] is not null && w.SiloStatus == "Active" && live[i]!.State != ShardState.Failed;
            return new WorkerInfo(w.Descriptor.WorkerId, w.Descriptor.GrpcEndpoint, w.Descriptor.SiloAddress, w.Descriptor.HostId, w.State.ToString(),
                w.SiloStatus, healthy ? "healthy" : "unhealthy", w.Descriptor.MemoryCapacityBytes, status?.ResidentBytes ?? 0, w.ExpertsAssigned,
                status?.Experts ?? 0, (status?.State ?? ShardState.Empty).ToString(), w.LastReportUnixMs == 0 ? null : w.LastReportUnixMs, status?.Error);
        }).ToList();
        var s = view.Snapshot;
        return new ClusterInfo(s.Plan.Model?.Fingerprint ?? view.Workers.FirstOrDefault()?.Descriptor.Model.Fingerprint ?? "", s.Plan.Version, s.Staged?.Version,
            s.IsServing, s.Problem, view.AutoPlaceJoiningWorkers, workers);
    }

    /// <summary>The active plan: per MoE layer, expert → workers.</summary>
    public async Task<PlacementInfo> GetPlacementAsync(CancellationToken cancellationToken)
    {
        var s = await CallAsync(() => placement.PlacementGrain.GetSnapshotAsync(), cancellationToken).ConfigureAwait(false);
        return ToPlacement(s.Plan, s.Staged?.Version, s.IsServing);
    }

    /// <summary>Routed tokens per layer and expert (recent window and total) and per-worker data-plane figures.</summary>
    public ExpertLoadInfo GetExpertLoad()
    {
        var load = dispatcher.Load;
        var layers = load.Model.MoeLayers.Select(l =>
        {
            var (recent, total) = load.Layer(l);
            return new LayerLoadInfo(l, recent, total);
        }).ToList();
        var workers = load.Workers.Select(w => new WorkerLoadInfo(w.WorkerId, w.Requests, w.Rows, w.BytesSent, w.BytesReceived,
            Math.Round(w.MeanLatencyMs, 3), Math.Round(w.MaxLatencyMs, 3), w.Failures, w.OutstandingRows)).ToList();
        return new ExpertLoadInfo(load.Window.TotalSeconds, layers, workers);
    }

    /// <summary>The scheduler's queue, batch, KV blocks, token/latency counters, prefix cache and preemption counters.</summary>
    /// <exception cref="AdminException">503 when this coordinator runs no scheduler (yet).</exception>
    public ServingInfo GetServing()
    {
        var s = serving?.Invoke()
            ?? throw new AdminException(503, "unavailable", "this coordinator has no serving scheduler (it is not serving requests, or has not started yet)");
        return new ServingInfo(Math.Round(System.Diagnostics.Stopwatch.GetElapsedTime(_started).TotalSeconds, 3), s.Queued, s.Running, s.KvBlocksUsed,
            s.KvBlocksCached, s.KvBlocksTotal, s.Steps, s.TokensGenerated, s.RequestsFinished, s.FirstTokens, s.TimeToFirstTokenSeconds, s.LaterTokens,
            s.InterTokenSeconds, s.PrefixQueriedTokens, s.PrefixHitTokens, Math.Round(s.PrefixHitRate, 6), s.PrefixEvictions, s.Preemptions);
    }

    /// <summary>Starts draining <paramref name="workerId"/>.</summary>
    /// <exception cref="AdminException">404 unknown worker; 409 last holder / no room / change in progress.</exception>
    public async Task<OperationInfo> DrainAsync(string workerId, CancellationToken cancellationToken)
    {
        if (string.IsNullOrWhiteSpace(workerId) || workerId.Length > 256)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, "worker id must be 1 to 256 characters", "worker");
        }
        var result = await CallAsync(() => placement.PlacementGrain.DrainWorkerAsync(workerId), cancellationToken).ConfigureAwait(false);
        return ToOperation(Accepted(result));
    }

    /// <summary>Adds and removes replicas (all or nothing).</summary>
    /// <exception cref="AdminException">400 malformed or unknown layer/expert; 404 unknown worker; 409 no room / last holder / change in progress.</exception>
    public async Task<OperationInfo> ChangeReplicasAsync(ReplicaChangeRequest request, CancellationToken cancellationToken)
    {
        if (request is null || ((request.Add?.Count ?? 0) + (request.Remove?.Count ?? 0)) == 0)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, "give at least one replica in 'add' or 'remove'", "add");
        }
        if (request.Add?.Count + request.Remove?.Count > 4096)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, "at most 4096 replica changes per call", "add");
        }
        var changes = new List<ReplicaChange>();
        void Collect(IReadOnlyList<ReplicaTarget>? list, bool add)
        {
            for (int i = 0; i < (list?.Count ?? 0); i++)
            {
                var t = list![i] ?? throw new AdminException(400, PlanChangeError.InvalidArgument, $"{(add ? "add" : "remove")}[{i}] is null", $"{(add ? "add" : "remove")}[{i}]");
                changes.Add(new ReplicaChange(t.Layer, t.Expert, string.IsNullOrEmpty(t.Worker) ? null : t.Worker, add));
            }
        }
        Collect(request.Add, add: true);
        Collect(request.Remove, add: false);
        var result = await CallAsync(() => placement.PlacementGrain.ChangeReplicasAsync([.. changes]), cancellationToken).ConfigureAwait(false);
        if (result.Error is { Field: { } field } error)
        {
            // The grain numbers adds and removes in one list; report the field as the caller wrote it.
            int addCount = request.Add?.Count ?? 0;
            var m = System.Text.RegularExpressions.Regex.Match(field, @"^(add|remove)\[(\d+)\](.*)$");
            if (m.Success && m.Groups[1].Value == "remove")
            {
                field = $"remove[{int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) - addCount}]{m.Groups[3].Value}";
            }
            throw AdminException.From(error with { Field = field });
        }
        return ToOperation(Accepted(result));
    }

    /// <summary>Recomputes placement from the measured load (or only proposes, on a dry run).</summary>
    /// <exception cref="AdminException">400 bad arguments; 409 not enough memory / change in progress.</exception>
    public async Task<RebalanceResult> RebalanceAsync(RebalanceRequestBody request, CancellationToken cancellationToken)
    {
        request ??= new RebalanceRequestBody();
        string window = (request.LoadWindow ?? "recent").ToLowerInvariant();
        if (window is not ("recent" or "total"))
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, $"load_window '{request.LoadWindow}' must be 'recent' or 'total'", "load_window");
        }
        if (request.ExtraReplicasPerLayer is < 0 or > 1 << 20)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument,
                $"extra_replicas_per_layer {request.ExtraReplicasPerLayer} must be within [0, {1 << 20}]", "extra_replicas_per_layer");
        }
        var loadStats = dispatcher.Load;
        var load = loadStats.Model.MoeLayers.Select(l =>
        {
            var (recent, total) = loadStats.Layer(l);
            return new LayerLoad(l, window == "total" ? total : recent);
        }).ToArray();
        var result = await CallAsync(() => placement.PlacementGrain.RebalanceAsync(new RebalanceRequest(load, request.ExtraReplicasPerLayer, request.DryRun)),
            cancellationToken).ConfigureAwait(false);
        if (result.Error is { } error)
        {
            throw AdminException.From(error);
        }
        return new RebalanceResult(request.DryRun, result.Operation is null ? null : ToOperation(result.Operation),
            ToPlacement(result.Proposed!, null, result.Proposed!.CoversAllExperts), ToBalance(result.Before), ToBalance(result.After), result.ExpertsMoved);
    }

    /// <summary>A plan change by id.</summary>
    /// <exception cref="AdminException">404 unknown operation.</exception>
    public Task<OperationInfo> GetOperationAsync(string id, CancellationToken cancellationToken)
        => GetOperationAsync(id, TimeSpan.Zero, cancellationToken);

    private static readonly TimeSpan WaitStep = TimeSpan.FromSeconds(10);

    /// <summary>Longest <c>wait</c> a caller may ask of <see cref="GetOperationAsync(string, TimeSpan, CancellationToken)"/>.</summary>
    public static readonly TimeSpan MaxOperationWait = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Operation <paramref name="id"/>; while it is still <c>Staging</c>, waits up to <paramref name="wait"/> (at most
    /// <see cref="MaxOperationWait"/>) for it to complete or fail, on the placement grain's change notification (every
    /// operation state change bumps the snapshot generation), and then answers with its state at that time.
    /// </summary>
    /// <exception cref="AdminException">400 for a bad id or wait, 404 for an unknown operation, 503 when the grain does not answer.</exception>
    public async Task<OperationInfo> GetOperationAsync(string id, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (string.IsNullOrWhiteSpace(id) || id.Length > 64)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, "operation id must be 1 to 64 characters", "id");
        }
        if (wait < TimeSpan.Zero || wait > MaxOperationWait)
        {
            throw new AdminException(400, PlanChangeError.InvalidArgument, $"wait must be 0 to {MaxOperationWait.TotalSeconds:F0} seconds", "wait");
        }
        var grain = placement.PlacementGrain;
        var time = timeProvider ?? TimeProvider.System;
        long start = time.GetTimestamp();
        while (true)
        {
            // The generation is read first: a change between it and the operation read ends the wait below at once.
            long generation = wait > TimeSpan.Zero ? (await CallAsync(grain.GetSnapshotAsync, cancellationToken).ConfigureAwait(false)).Generation : 0;
            var op = await CallAsync(() => grain.GetOperationAsync(id), cancellationToken).ConfigureAwait(false)
                ?? throw new AdminException(404, "unknown_operation", $"operation '{id}' is unknown (the cluster keeps the most recent 256)", "id");
            var left = wait - time.GetElapsedTime(start);
            if (op.State != OperationState.Staging || left <= TimeSpan.Zero)
            {
                return ToOperation(op);
            }
            // One grain call waits at most WaitStep, well inside the grain call timeout; the loop covers longer waits.
            await CallAsync(() => grain.WaitForChangeAsync(generation, left < WaitStep ? left : WaitStep), cancellationToken).ConfigureAwait(false);
        }
    }

    private static PlacementOperation Accepted(PlanChangeResult result)
    {
        if (result.Error is { } error)
        {
            throw AdminException.From(error);
        }
        return result.Operation ?? throw new AdminException(503, "unavailable", "the placement grain returned no operation");
    }

    private static async Task<T> CallAsync<T>(Func<Task<T>> call, CancellationToken cancellationToken)
    {
        try
        {
            return await call().WaitAsync(TimeSpan.FromSeconds(30), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not AdminException and not OperationCanceledException)
        {
            throw new AdminException(503, "unavailable", $"the cluster's placement grain did not answer: {ex.GetType().Name}: {ex.Message}", inner: ex);
        }
    }

    /// <summary>The REST/gRPC view of a plan.</summary>
    public static PlacementInfo ToPlacement(PlacementPlan plan, long? staged, bool serving)
    {
        ArgumentNullException.ThrowIfNull(plan);
        return new PlacementInfo(plan.Version, staged, serving, [.. plan.Workers.Select(w => w.WorkerId)],
            [.. plan.Layers.Select(l => new LayerPlacementInfo(l.Layer,
                [.. l.Replicas.Select((r, e) => new ExpertHoldersInfo(e, [.. r.Select(i => plan.Workers[i].WorkerId)]))]))]);
    }

    /// <summary>The REST/gRPC view of an operation.</summary>
    public static OperationInfo ToOperation(PlacementOperation op)
    {
        ArgumentNullException.ThrowIfNull(op);
        return new OperationInfo(op.Id, op.Kind.ToString(), op.State.ToString(), op.BaseVersion, op.TargetVersion, op.Description, op.Error,
            op.WorkersStaged, op.WorkersTotal, op.CreatedUnixMs, op.FinishedUnixMs == 0 ? null : op.FinishedUnixMs);
    }

    private static BalanceInfo ToBalance(BalanceReport? b)
        => b is null ? new BalanceInfo(1, 1, new Dictionary<string, double>())
            : new BalanceInfo(Math.Round(b.MaxOverMean, 4), Math.Round(b.WorstLayerMaxOverMean, 4), b.WorkerLoad.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 4)));
}
