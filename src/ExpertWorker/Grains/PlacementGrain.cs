using Distributed.ExpertWorker.Placement;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Grains;

/// <summary>Persisted state of the placement grain: the plan as MessagePack bytes (<see cref="PlacementPlanCodec"/>) and the registered workers.</summary>
[GenerateSerializer, Alias("distributed.PlacementGrainState")]
public sealed class PlacementGrainState
{
    /// <summary><see cref="PlacementPlanCodec"/> bytes of the active plan (empty before the first plan).</summary>
    [Id(0)]
    public byte[] Plan { get; set; } = [];

    /// <summary>Registered workers.</summary>
    [Id(1)]
    public List<WorkerDescriptor> Workers { get; set; } = [];

    /// <summary>Workers an operator drained (never given experts again until they re-register).</summary>
    [Id(2)]
    public List<string> Draining { get; set; } = [];

    /// <summary>Highest plan version ever issued (staged plans that failed included), so versions are never reused.</summary>
    [Id(3)]
    public long LastVersion { get; set; }

    /// <summary>Operations issued so far (the next id).</summary>
    [Id(4)]
    public long Operations { get; set; }

    /// <summary>The most recent operations, oldest first.</summary>
    [Id(5)]
    public List<PlacementOperation> OperationLog { get; set; } = [];
}

/// <summary>
/// The cluster's placement authority (see <see cref="IPlacementGrain"/>). Every plan change is staged: the target plan
/// is published next to the active one, its workers load and warm their new experts (serving both versions), and
/// once all report it the grain commits it as the active plan in one step, so coordinators switch atomically; workers
/// release what they no longer hold after their retire delay. Automatic changes: the first plan once registrations
/// settle, repairs when workers leave or die (membership, unregistration or a confirmed coordinator report), and
/// spreading experts onto joining workers (unless held). Operator changes (drain, replicas, rebalance) are refused with
/// a precise error, changing nothing, when invalid or while another change is staging.
/// </summary>
[PlacementAuthority]
public sealed partial class PlacementGrain(
    [PersistentState("placement", PlacementGrain.StorageName)] IPersistentState<PlacementGrainState> state,
    IClusterMembershipService membership,
    IOptions<PlacementOptions> options,
    ILogger<PlacementGrain> logger) : Grain, IPlacementGrain
{
    /// <summary>Grain storage provider name the silo must register.</summary>
    public const string StorageName = "placement";

    private const int MaxOperations = 256;
    private static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(20);
    private readonly Dictionary<string, WorkerDescriptor> _workers = new(StringComparer.Ordinal);
    private readonly HashSet<string> _draining = new(StringComparer.Ordinal);
    private readonly HashSet<string> _ready = new(StringComparer.Ordinal);
    private readonly HashSet<string> _stagedReady = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (ShardStatus Status, long UnixMs)> _lastStatus = new(StringComparer.Ordinal);
    private readonly Dictionary<string, PlacementOperation> _operations = new(StringComparer.Ordinal);
    private readonly Queue<string> _operationOrder = new();
    private PlacementPlan _plan = PlacementPlan.Empty;
    private PlacementPlan? _staged;
    private string? _stagedProblem;
    private string? _stagedOperation;
    private DateTime _stageStartedUtc;
    private string? _problem;
    private ModelDescriptor? _model;
    private long _generation;
    private bool _joinPending;
    private bool _repairPending;
    private DateTime _lastChangeUtc;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private PlacementOptions Options => options.Value;

    /// <inheritdoc />
    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        if (state.State.Plan.Length > 0)
        {
            _plan = PlacementPlanCodec.Deserialize(state.State.Plan);
            _model = _plan.Model;
            // A restored plan is served by workers that already hold it; they re-report on their next poll.
            foreach (var w in _plan.Workers)
            {
                _ready.Add(w.WorkerId);
            }
        }
        foreach (var w in state.State.Workers)
        {
            _workers[w.WorkerId] = w;
            _model ??= w.Model;
        }
        foreach (var d in state.State.Draining)
        {
            _draining.Add(d);
        }
        state.State.LastVersion = Math.Max(state.State.LastVersion, _plan.Version);
        foreach (var op in state.State.OperationLog)
        {
            // A change staging when the previous activation ended is abandoned; its workers re-apply the active plan.
            _operations[op.Id] = op.State == OperationState.Staging
                ? op with { State = OperationState.Failed, Error = "the placement authority restarted while it was staging", FinishedUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() }
                : op;
            _operationOrder.Enqueue(op.Id);
        }
        _generation = _plan.Version * 1_000_000;
        // Orleans may re-activate this grain elsewhere when a silo dies (e.g. the one owning its directory entry), right
        // while it repairs that loss. The staged change is abandoned above, so the repair must be redone: a worker of
        // the active plan that is no longer registered means lost experts; registered workers outside the plan are
        // joiners waiting for a (re)staged join.
        if (_plan.Version > 0 && _plan.Workers.Any(w => !_workers.ContainsKey(w.WorkerId)))
        {
            _repairPending = true;
        }
        if (_plan.Version > 0 && _workers.Keys.Any(id => _plan.IndexOf(id) < 0 && !_draining.Contains(id)))
        {
            _joinPending = true;
        }
        this.RegisterGrainTimer(TickAsync, new GrainTimerCreationOptions(Options.CheckInterval, Options.CheckInterval) { KeepAlive = true });
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async Task<PlacementSnapshot> RegisterWorkerAsync(WorkerDescriptor worker)
    {
        ArgumentNullException.ThrowIfNull(worker);
        if (string.IsNullOrWhiteSpace(worker.WorkerId) || string.IsNullOrWhiteSpace(worker.GrpcEndpoint) || worker.Model is null)
        {
            throw new ArgumentException("WorkerDescriptor.WorkerId, GrpcEndpoint and Model are required");
        }
        worker.Model.Validate();
        if (_model is not null && _model.Fingerprint != worker.Model.Fingerprint)
        {
            throw new ArgumentException(
                $"worker '{worker.WorkerId}' serves model {worker.Model.Fingerprint[..Math.Min(12, worker.Model.Fingerprint.Length)]}, the cluster serves {_model.Fingerprint[..Math.Min(12, _model.Fingerprint.Length)]}");
        }
        _model ??= worker.Model;
        if (_workers.TryGetValue(worker.WorkerId, out var known) && known == worker)
        {
            return Snapshot();
        }
        if (known is not null && InAnyPlan(worker.WorkerId))
        {
            // Same id, new process (restart): the old one's experts and endpoint are gone.
            await RemoveWorkerAsync(worker.WorkerId, "re-registered from a new process");
        }
        _workers[worker.WorkerId] = worker;
        _draining.Remove(worker.WorkerId);
        LogMembership(worker.WorkerId, "registered", worker.GrpcEndpoint);
        _joinPending = true;
        _lastChangeUtc = DateTime.UtcNow;
        await PersistAsync();
        return Snapshot();
    }

    /// <inheritdoc />
    public async Task UnregisterWorkerAsync(string workerId)
    {
        if (_workers.ContainsKey(workerId))
        {
            await RemoveWorkerAsync(workerId, "unregistered");
            await StartAutomaticChangeAsync();
        }
    }

    /// <inheritdoc />
    public Task<PlacementSnapshot> GetSnapshotAsync() => Task.FromResult(Snapshot());

    /// <inheritdoc />
    public async Task<PlacementSnapshot> WaitForChangeAsync(long knownGeneration, TimeSpan maxWait)
    {
        if (knownGeneration == _generation)
        {
            var wait = maxWait < TimeSpan.Zero ? TimeSpan.Zero : maxWait > MaxWait ? MaxWait : maxWait;
            await Task.WhenAny(_changed.Task, Task.Delay(wait));
        }
        return Snapshot();
    }

    /// <inheritdoc />
    public async Task ReportShardStatusAsync(ShardStatus status)
    {
        ArgumentNullException.ThrowIfNull(status);
        if (!_workers.ContainsKey(status.WorkerId))
        {
            return;
        }
        _lastStatus[status.WorkerId] = (status, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        bool changed = false;
        if (_staged is { } staged && status.StagedVersion == staged.Version && staged.IndexOf(status.WorkerId) >= 0)
        {
            if (status.State == ShardState.Failed)
            {
                await AbortStagedAsync($"worker '{status.WorkerId}' failed to load its experts for plan {staged.Version}: {status.Error}");
                return;
            }
            changed = _stagedReady.Add(status.WorkerId);
            UpdateStagedOperation();
            if (_stagedReady.Count == staged.Workers.Length)
            {
                await CommitAsync();
                return;
            }
        }
        if (status.PlanVersion == _plan.Version && _plan.IndexOf(status.WorkerId) >= 0)
        {
            bool ready = !(status.State == ShardState.Failed && status.StagedVersion == 0);
            changed |= ready ? _ready.Add(status.WorkerId) : _ready.Remove(status.WorkerId);
        }
        if (changed)
        {
            Bump();
        }
    }

    /// <inheritdoc />
    public async Task<UnreachableVerdict> ReportUnreachableAsync(string workerId, string reason)
    {
        if (string.IsNullOrEmpty(workerId) || !_workers.TryGetValue(workerId, out var worker))
        {
            return UnreachableVerdict.Unknown;
        }
        LogUnreachable(workerId, reason ?? "");
        bool dead = SiloAddress.FromParsableString(worker.SiloAddress) is { } silo && membership.CurrentSnapshot.GetSiloStatus(silo) == SiloStatus.Dead;
        if (!dead)
        {
            try
            {
                await GrainFactory.GetGrain<IExpertShardGrain>(workerId).GetStatusAsync().WaitAsync(Options.ProbeTimeout);
                return UnreachableVerdict.Alive;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                reason = $"{reason}; its shard did not answer within {Options.ProbeTimeout.TotalMilliseconds:F0} ms ({ex.GetType().Name})";
            }
        }
        if (_workers.TryGetValue(workerId, out var current) && current == worker)
        {
            await RemoveWorkerAsync(workerId, "unreachable: " + reason);
            await StartAutomaticChangeAsync();
        }
        return UnreachableVerdict.Removed;
    }

    /// <inheritdoc />
    public Task<ClusterView> GetClusterAsync()
    {
        var snapshot = membership.CurrentSnapshot;
        var views = _workers.Values.OrderBy(w => w.WorkerId, StringComparer.Ordinal).Select(w =>
        {
            int index = _plan.IndexOf(w.WorkerId);
            int assigned = index < 0 ? 0 : _plan.ShardOf(index).Count;
            WorkerState s = _draining.Contains(w.WorkerId) ? (assigned > 0 || (_staged?.IndexOf(w.WorkerId) is >= 0 and var si && _staged.ShardOf(si).Count > 0) ? WorkerState.Draining : WorkerState.Drained)
                : index < 0 ? WorkerState.Joining
                : _ready.Contains(w.WorkerId) ? WorkerState.Active
                : WorkerState.NotReady;
            string silo = SiloAddress.FromParsableString(w.SiloAddress) is { } a ? snapshot.GetSiloStatus(a).ToString() : "Unknown";
            var last = _lastStatus.TryGetValue(w.WorkerId, out var l) ? l : default;
            return new WorkerView(w, s, silo, assigned, last.Status, last.UnixMs);
        }).ToArray();
        return Task.FromResult(new ClusterView(views, Snapshot(), Options.AutoPlaceJoiningWorkers));
    }

    /// <inheritdoc />
    public async Task<PlanChangeResult> DrainWorkerAsync(string workerId)
    {
        if (Precheck() is { } refused)
        {
            return refused;
        }
        if (string.IsNullOrWhiteSpace(workerId) || !_workers.ContainsKey(workerId))
        {
            return PlanChangeResult.Refused(PlanChangeError.UnknownWorker, $"worker '{workerId}' is not registered (known: {string.Join(", ", _workers.Keys.Order(StringComparer.Ordinal))})", "worker");
        }
        var excluded = new HashSet<string>(_draining, StringComparer.Ordinal) { workerId };
        var draft = CurrentDraft();
        var before = CurrentDraft();
        if (PlacementEditor.Drain(draft, workerId, excluded) is { } error)
        {
            return new PlanChangeResult(error, null, null, null, null, 0);
        }
        PlacementEditor.Repair(draft, excluded);
        _draining.Add(workerId);
        await PersistAsync();
        return await StageOperatorChangeAsync(before, draft, PlanChangeKind.Drain, $"drain worker '{workerId}'");
    }

    /// <inheritdoc />
    public async Task<PlanChangeResult> ChangeReplicasAsync(ReplicaChange[] changes)
    {
        if (Precheck() is { } refused)
        {
            return refused;
        }
        if (changes is null || changes.Length == 0)
        {
            return PlanChangeResult.Refused(PlanChangeError.InvalidArgument, "no replica change given", "add");
        }
        var draft = CurrentDraft();
        var before = CurrentDraft();
        if (PlacementEditor.ChangeReplicas(draft, changes, _draining) is { } error)
        {
            return new PlanChangeResult(error, null, null, null, null, 0);
        }
        PlacementEditor.Repair(draft, _draining);
        string what = string.Join(", ", changes.Take(4).Select(c => $"{(c.Add ? "+" : "-")}L{c.Layer}.E{c.Expert}{(c.WorkerId is null ? "" : "@" + c.WorkerId)}"))
            + (changes.Length > 4 ? $" and {changes.Length - 4} more" : "");
        return await StageOperatorChangeAsync(before, draft, PlanChangeKind.Replicas, "replicas " + what);
    }

    /// <inheritdoc />
    public async Task<PlanChangeResult> RebalanceAsync(RebalanceRequest request)
    {
        if (Precheck() is { } refused)
        {
            return refused;
        }
        ArgumentNullException.ThrowIfNull(request);
        var model = _model!;
        var load = request.Load ?? [];
        for (int i = 0; i < load.Length; i++)
        {
            if (load[i] is null || !model.IsMoeLayer(load[i].Layer))
            {
                return PlanChangeResult.Refused(PlanChangeError.UnknownExpert,
                    $"load[{i}]: layer {load[i]?.Layer} is not a MoE layer (MoE layers: {string.Join(", ", model.MoeLayers)})", $"load[{i}].layer");
            }
            if (load[i].Tokens is null || load[i].Tokens.Length != model.NumExperts || load[i].Tokens.Any(t => t < 0))
            {
                return PlanChangeResult.Refused(PlanChangeError.InvalidArgument,
                    $"load[{i}].tokens must hold {model.NumExperts} non-negative counts", $"load[{i}].tokens");
            }
        }
        if (request.ExtraReplicasPerLayer is < 0 or > 1 << 20)
        {
            return PlanChangeResult.Refused(PlanChangeError.InvalidArgument,
                $"extra_replicas_per_layer {request.ExtraReplicasPerLayer} must be within [0, {1 << 20}]", "extra_replicas_per_layer");
        }
        var current = CurrentDraft();
        var (draft, error) = PlacementEditor.Rebalance(current, load, request.ExtraReplicasPerLayer, _draining);
        if (error is not null)
        {
            return new PlanChangeResult(error, null, null, null, null, 0);
        }
        var beforeBalance = PlacementEditor.Balance(current, load, _draining);
        var afterBalance = PlacementEditor.Balance(draft!, load, _draining);
        if (request.DryRun)
        {
            var proposed = draft!.ToPlan(state.State.LastVersion + 1, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            return new PlanChangeResult(null, null, proposed, beforeBalance, afterBalance, PlacementEditor.CountLoads(current, draft));
        }
        var result = await StageOperatorChangeAsync(current, draft!, PlanChangeKind.Rebalance,
            $"rebalance: predicted max/mean load {beforeBalance.MaxOverMean:F3} -> {afterBalance.MaxOverMean:F3}");
        return result with { Before = beforeBalance, After = afterBalance };
    }

    /// <inheritdoc />
    public Task<PlacementOperation?> GetOperationAsync(string operationId)
        => Task.FromResult(operationId is not null && _operations.TryGetValue(operationId, out var op) ? op : null);

    private PlanChangeResult? Precheck()
    {
        if (_model is null || _plan.Version == 0)
        {
            return PlanChangeResult.Refused(PlanChangeError.NoPlan, "the cluster has no placement plan yet (no worker registered)");
        }
        if (_staged is not null)
        {
            return PlanChangeResult.Refused(PlanChangeError.ChangeInProgress,
                $"plan change {_stagedOperation} (plan {_staged.Version}) is staging; retry when it completed");
        }
        return null;
    }

    private PlacementDraft CurrentDraft() => PlacementDraft.FromPlan(_plan, _model!, _workers.Values);

    private async Task<PlanChangeResult> StageOperatorChangeAsync(PlacementDraft before, PlacementDraft after, PlanChangeKind kind, string description)
    {
        int loads = PlacementEditor.CountLoads(before, after);
        if (PlacementEditor.SameAssignment(before, after) && _plan.Workers.Length == after.Workers.Count)
        {
            var done = NewOperation(kind, _plan.Version, _plan.Version, description + " (no change needed)", OperationState.Completed, after.Workers.Count);
            return new PlanChangeResult(null, done, _plan, null, null, 0);
        }
        var plan = after.ToPlan(++state.State.LastVersion, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var orphans = after.Orphans().ToList();
        var op = await StageAsync(plan, kind, description, orphans.Count == 0 ? null : $"{PlacementEditor.Describe(orphans)} have no worker");
        return new PlanChangeResult(null, op, plan, null, null, loads);
    }

    private async Task TickAsync(CancellationToken cancellationToken)
    {
        var snapshot = membership.CurrentSnapshot;
        foreach (var w in _workers.Values.ToList())
        {
            if (SiloAddress.FromParsableString(w.SiloAddress) is { } silo && snapshot.GetSiloStatus(silo) == SiloStatus.Dead)
            {
                await RemoveWorkerAsync(w.WorkerId, "left (silo dead)");
            }
        }
        if (_staged is { } staged)
        {
            if (DateTime.UtcNow - _stageStartedUtc > Options.StageTimeout)
            {
                var missing = staged.Workers.Select(w => w.WorkerId).Where(w => !_stagedReady.Contains(w));
                await AbortStagedAsync($"plan {staged.Version} was not staged within {Options.StageTimeout.TotalSeconds:F0} s (waiting for {string.Join(", ", missing)})");
            }
            return;
        }
        if (_repairPending || (_joinPending && DateTime.UtcNow - _lastChangeUtc >= Options.SettleDelay))
        {
            await StartAutomaticChangeAsync();
        }
    }

    private async Task StartAutomaticChangeAsync()
    {
        if (_staged is not null || _model is null || !(_repairPending || _joinPending))
        {
            return;
        }
        bool repair = _repairPending;
        _repairPending = false;
        _joinPending = false;
        if (_workers.Count == 0)
        {
            return;
        }
        PlacementDraft draft;
        PlanChangeKind kind;
        string description;
        var before = CurrentDraft();
        if (_plan.Version == 0 || _plan.Workers.Length == 0)
        {
            var built = PlacementPlanner.Build(0, _model, [.. _workers.Values.Where(w => !_draining.Contains(w.WorkerId))], Options.ReplicationFactor, 0);
            draft = PlacementDraft.FromPlan(built with { Version = 1 }, _model, _workers.Values);
            kind = PlanChangeKind.Initial;
            description = $"initial plan for {_workers.Count} workers";
        }
        else
        {
            draft = CurrentDraft();
            var joiners = _workers.Keys.Where(w => _plan.IndexOf(w) < 0).ToList();
            int moved = Options.AutoPlaceJoiningWorkers ? PlacementEditor.SpreadTo(draft, joiners, _draining) : 0;
            var unplacedBefore = draft.Orphans().Count();
            int unplacedAfter = PlacementEditor.Repair(draft, _draining).Count;
            PlacementEditor.TopUp(draft, Options.ReplicationFactor, _draining);
            kind = repair || unplacedBefore > 0 ? PlanChangeKind.Repair : PlanChangeKind.Join;
            var gone = _plan.Workers.Select(w => w.WorkerId).Where(w => !_workers.ContainsKey(w)).ToList();
            description = kind == PlanChangeKind.Repair
                ? $"repair: {unplacedBefore - unplacedAfter} of {unplacedBefore} experts re-placed{(gone.Count > 0 ? " after losing " + string.Join(", ", gone) : "")}"
                : $"join: {string.Join(", ", joiners)} ({(Options.AutoPlaceJoiningWorkers ? $"{moved} experts moved onto them" : "held with no experts")})";
        }
        if (PlacementEditor.SameAssignment(before, draft) && _plan.Workers.Length == draft.Workers.Count && _plan.Version > 0)
        {
            return;
        }
        var plan = draft.ToPlan(++state.State.LastVersion, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var orphans = draft.Orphans().ToList();
        string? problem = orphans.Count == 0 ? null
            : $"{PlacementEditor.Describe(orphans)} cannot be placed: the {draft.Workers.Count(w => !_draining.Contains(w.WorkerId))} active workers have no memory left for them";
        await StageAsync(plan, kind, description, problem);
    }

    private async Task<PlacementOperation> StageAsync(PlacementPlan plan, PlanChangeKind kind, string description, string? problem)
    {
        var op = NewOperation(kind, _plan.Version, plan.Version, description, OperationState.Staging, plan.Workers.Length);
        _staged = plan;
        _stagedProblem = problem;
        _stagedOperation = op.Id;
        _stagedReady.Clear();
        _stageStartedUtc = DateTime.UtcNow;
        await PersistAsync();
        LogOperation(op.Id, kind, plan.Version, "staging", description);
        Bump();
        return op;
    }

    private async Task CommitAsync()
    {
        var plan = _staged!;
        _plan = plan;
        _ready.Clear();
        _ready.UnionWith(_stagedReady);
        _problem = _stagedProblem;
        _staged = null;
        _stagedReady.Clear();
        FinishOperation(_stagedOperation, OperationState.Completed, null);
        LogOperation(_stagedOperation ?? "", _operations.TryGetValue(_stagedOperation ?? "", out var op) ? op.Kind : PlanChangeKind.Join, plan.Version, "committed", _problem ?? "covers every expert");
        _stagedOperation = null;
        state.State.Plan = PlacementPlanCodec.Serialize(plan);
        await PersistAsync();
        LogRebuilt(plan.Version, plan.Workers.Length, plan.CoversAllExperts);
        Bump();
    }

    private async Task AbortStagedAsync(string reason)
    {
        if (_staged is null)
        {
            return;
        }
        LogOperation(_stagedOperation ?? "", PlanChangeKind.Join, _staged.Version, "failed", reason);
        FinishOperation(_stagedOperation, OperationState.Failed, reason);
        _staged = null;
        _stagedProblem = null;
        _stagedOperation = null;
        _stagedReady.Clear();
        await PersistAsync();
        Bump();
    }

    private async Task RemoveWorkerAsync(string workerId, string why)
    {
        if (!_workers.Remove(workerId, out var w))
        {
            return;
        }
        _lastStatus.Remove(workerId);
        // It stays "ready" for the active plan until the repair commits: coordinators keep routing with the plan (a
        // dispatch to the lost worker fails fast and waits for the repair, or goes to a replica) instead of refusing.
        _draining.Remove(workerId);
        LogMembership(workerId, why, w.GrpcEndpoint);
        if (_staged is not null && _staged.IndexOf(workerId) >= 0)
        {
            await AbortStagedAsync($"worker '{workerId}' left while plan {_staged.Version} was staging ({why})");
        }
        if (InAnyPlan(workerId) || _plan.Version == 0)
        {
            _repairPending = true;
        }
        await PersistAsync();
        Bump();
    }

    private bool InAnyPlan(string workerId) => _plan.IndexOf(workerId) >= 0 || (_staged?.IndexOf(workerId) ?? -1) >= 0;

    private PlacementOperation NewOperation(PlanChangeKind kind, long baseVersion, long targetVersion, string description, OperationState s, int workers)
    {
        string id = $"op-{++state.State.Operations}";
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var op = new PlacementOperation(id, kind, s, baseVersion, targetVersion, description, null, s == OperationState.Completed ? workers : 0, workers, now,
            s == OperationState.Staging ? 0 : now);
        _operations[id] = op;
        _operationOrder.Enqueue(id);
        while (_operationOrder.Count > MaxOperations)
        {
            _operations.Remove(_operationOrder.Dequeue());
        }
        return op;
    }

    private void UpdateStagedOperation()
    {
        if (_stagedOperation is not null && _operations.TryGetValue(_stagedOperation, out var op))
        {
            _operations[_stagedOperation] = op with { WorkersStaged = _stagedReady.Count };
        }
    }

    private void FinishOperation(string? id, OperationState s, string? error)
    {
        if (id is not null && _operations.TryGetValue(id, out var op))
        {
            _operations[id] = op with
            {
                State = s,
                Error = error,
                WorkersStaged = s == OperationState.Completed ? op.WorkersTotal : _stagedReady.Count,
                FinishedUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            };
        }
    }

    private async Task PersistAsync()
    {
        state.State.Workers = [.. _workers.Values];
        state.State.Draining = [.. _draining];
        state.State.OperationLog = [.. _operationOrder.Select(id => _operations[id])];
        await state.WriteStateAsync();
    }

    private void Bump()
    {
        _generation++;
        var old = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        old.TrySetResult();
    }

    private PlacementSnapshot Snapshot() => new(_plan, [.. _ready.Order(StringComparer.Ordinal)], _generation, _staged,
        _staged is null ? null : [.. _stagedReady.Order(StringComparer.Ordinal)], _problem);

    [LoggerMessage(EventId = Diagnostics.LogEvents.PlanRebuilt, Level = LogLevel.Information,
        Message = "Placement plan {PlanVersion} active for {Workers} workers (covers every expert: {Covers})")]
    private partial void LogRebuilt(long planVersion, int workers, bool covers);

    [LoggerMessage(EventId = Diagnostics.LogEvents.WorkerMembership, Level = LogLevel.Information,
        Message = "Worker {WorkerId} {Change} {Endpoint}")]
    private partial void LogMembership(string workerId, string change, string endpoint);

    [LoggerMessage(EventId = Diagnostics.LogEvents.PlanOperation, Level = LogLevel.Information,
        Message = "Plan change {OperationId} ({Kind}) to plan {PlanVersion}: {Outcome}: {Description}")]
    private partial void LogOperation(string operationId, PlanChangeKind kind, long planVersion, string outcome, string description);

    [LoggerMessage(EventId = Diagnostics.LogEvents.WorkerUnreachable, Level = LogLevel.Warning,
        Message = "A coordinator reports worker {WorkerId} unreachable: {Reason}")]
    private partial void LogUnreachable(string workerId, string reason);
}
