namespace Distributed.Protocol.Grains;

/// <summary>What caused a plan change.</summary>
public enum PlanChangeKind
{
    /// <summary>The first plan of the cluster.</summary>
    Initial = 0,
    /// <summary>Workers joined and were given experts (or listed with none when joining workers are held).</summary>
    Join = 1,
    /// <summary>Workers left or died; their experts without another copy were re-placed on the survivors.</summary>
    Repair = 2,
    /// <summary>An operator drained a worker.</summary>
    Drain = 3,
    /// <summary>An operator added or removed replicas.</summary>
    Replicas = 4,
    /// <summary>An operator rebalanced from measured load.</summary>
    Rebalance = 5,
}

/// <summary>Progress of a plan change.</summary>
public enum OperationState
{
    /// <summary>The target plan is staged; its workers are loading and warming their new experts.</summary>
    Staging = 0,
    /// <summary>The target plan was committed: coordinators route with it.</summary>
    Completed = 1,
    /// <summary>Staging failed (a worker failed to load, left, or timed out) or a newer change superseded it; the active plan is unchanged.</summary>
    Failed = 2,
}

/// <summary>One plan change and its outcome.</summary>
/// <param name="Id">Operation id (<c>op-N</c>).</param>
/// <param name="Kind">What caused it.</param>
/// <param name="State">Progress.</param>
/// <param name="BaseVersion">Active plan version when it started.</param>
/// <param name="TargetVersion">Version of the staged plan.</param>
/// <param name="Description">What it changes, in words.</param>
/// <param name="Error">Why it failed, or null.</param>
/// <param name="WorkersStaged">Workers of the target plan that hold their staged shard.</param>
/// <param name="WorkersTotal">Workers in the target plan.</param>
/// <param name="CreatedUnixMs">When it started.</param>
/// <param name="FinishedUnixMs">When it completed or failed; 0 while staging.</param>
[GenerateSerializer, Immutable, Alias("distributed.PlacementOperation")]
public sealed record PlacementOperation(
    [property: Id(0)] string Id,
    [property: Id(1)] PlanChangeKind Kind,
    [property: Id(2)] OperationState State,
    [property: Id(3)] long BaseVersion,
    [property: Id(4)] long TargetVersion,
    [property: Id(5)] string Description,
    [property: Id(6)] string? Error,
    [property: Id(7)] int WorkersStaged,
    [property: Id(8)] int WorkersTotal,
    [property: Id(9)] long CreatedUnixMs,
    [property: Id(10)] long FinishedUnixMs);

/// <summary>Why an admin change was refused (nothing changed).</summary>
/// <param name="Code">Stable machine-readable code: <c>unknown_worker</c>, <c>unknown_expert</c>, <c>invalid_argument</c>,
/// <c>insufficient_memory</c>, <c>last_holder</c>, <c>change_in_progress</c>, <c>no_plan</c>.</param>
/// <param name="Message">What is wrong, naming the worker, layer or expert.</param>
/// <param name="Field">The request field at fault, or null.</param>
[GenerateSerializer, Immutable, Alias("distributed.PlanChangeError")]
public sealed record PlanChangeError(
    [property: Id(0)] string Code,
    [property: Id(1)] string Message,
    [property: Id(2)] string? Field = null)
{
    /// <summary>A worker id that is not registered.</summary>
    public const string UnknownWorker = "unknown_worker";
    /// <summary>A layer that is not a MoE layer or an expert out of range.</summary>
    public const string UnknownExpert = "unknown_expert";
    /// <summary>A malformed request.</summary>
    public const string InvalidArgument = "invalid_argument";
    /// <summary>No worker has room for what was asked.</summary>
    public const string InsufficientMemory = "insufficient_memory";
    /// <summary>The change would leave an expert without any holder.</summary>
    public const string LastHolder = "last_holder";
    /// <summary>Another plan change is staging.</summary>
    public const string ChangeInProgress = "change_in_progress";
    /// <summary>The cluster has no plan yet.</summary>
    public const string NoPlan = "no_plan";
}

/// <summary>How evenly a plan spreads routed load over workers, per MoE layer (a layer waits for its slowest worker).</summary>
/// <param name="MaxOverMean">Mean over layers of (largest worker load ÷ mean worker load) in that layer; 1 = perfect.</param>
/// <param name="WorstLayerMaxOverMean">The largest per-layer ratio.</param>
/// <param name="WorkerLoad">Predicted share of all routed tokens per worker id (an expert's load split evenly over its replicas).</param>
[GenerateSerializer, Immutable, Alias("distributed.BalanceReport")]
public sealed record BalanceReport(
    [property: Id(0)] double MaxOverMean,
    [property: Id(1)] double WorstLayerMaxOverMean,
    [property: Id(2)] Dictionary<string, double> WorkerLoad);

/// <summary>Answer to an admin change: either an error (nothing changed) or the plan it stages (or would stage, dry run).</summary>
/// <param name="Error">Why it was refused, or null.</param>
/// <param name="Operation">The staged operation (null on error or dry run).</param>
/// <param name="Proposed">The proposed plan (version = the version it would get).</param>
/// <param name="Before">Predicted balance of the active plan under the given load (rebalance only).</param>
/// <param name="After">Predicted balance of the proposed plan (rebalance only).</param>
/// <param name="ExpertsMoved">Expert copies the change loads on some worker.</param>
[GenerateSerializer, Immutable, Alias("distributed.PlanChangeResult")]
public sealed record PlanChangeResult(
    [property: Id(0)] PlanChangeError? Error,
    [property: Id(1)] PlacementOperation? Operation,
    [property: Id(2)] PlacementPlan? Proposed,
    [property: Id(3)] BalanceReport? Before,
    [property: Id(4)] BalanceReport? After,
    [property: Id(5)] int ExpertsMoved)
{
    /// <summary>A refusal.</summary>
    public static PlanChangeResult Refused(string code, string message, string? field = null) => new(new PlanChangeError(code, message, field), null, null, null, null, 0);
}

/// <summary>Add or remove one replica.</summary>
/// <param name="Layer">MoE layer.</param>
/// <param name="Expert">Expert id.</param>
/// <param name="WorkerId">Worker to add to or remove from; null = chosen (add: the least-filled worker with room that
/// does not hold it; remove: the most-filled holder).</param>
/// <param name="Add">True to add a replica, false to remove one.</param>
[GenerateSerializer, Immutable, Alias("distributed.ReplicaChange")]
public sealed record ReplicaChange(
    [property: Id(0)] int Layer,
    [property: Id(1)] int Expert,
    [property: Id(2)] string? WorkerId,
    [property: Id(3)] bool Add);

/// <summary>Routed tokens per expert of one MoE layer (the measured load a rebalance packs by).</summary>
/// <param name="Layer">MoE layer.</param>
/// <param name="Tokens"><c>Tokens[e]</c> = rows routed to expert e.</param>
[GenerateSerializer, Immutable, Alias("distributed.LayerLoad")]
public sealed record LayerLoad(
    [property: Id(0)] int Layer,
    [property: Id(1)] long[] Tokens);

/// <summary>A rebalance request.</summary>
/// <param name="Load">Measured load per MoE layer (missing layers count as uniform).</param>
/// <param name="ExtraReplicasPerLayer">Replicas beyond one copy per expert to hand to the hottest experts of each
/// layer; null = as many as there are workers, limited by memory.</param>
/// <param name="DryRun">Only compute and return the proposal.</param>
[GenerateSerializer, Immutable, Alias("distributed.RebalanceRequest")]
public sealed record RebalanceRequest(
    [property: Id(0)] LayerLoad[] Load,
    [property: Id(1)] int? ExtraReplicasPerLayer,
    [property: Id(2)] bool DryRun);

/// <summary>Lifecycle of a registered worker as the placement grain sees it.</summary>
public enum WorkerState
{
    /// <summary>In the active plan and serving its shard.</summary>
    Active = 0,
    /// <summary>Registered, not yet in the active plan (joining, or held for an explicit rebalance with no experts).</summary>
    Joining = 1,
    /// <summary>Drain requested: its experts are moving elsewhere.</summary>
    Draining = 2,
    /// <summary>Drained: holds no expert in the active plan; safe to stop.</summary>
    Drained = 3,
    /// <summary>In the active plan but not (yet) serving its version.</summary>
    NotReady = 4,
}

/// <summary>One registered worker.</summary>
/// <param name="Descriptor">Its registration.</param>
/// <param name="State">Lifecycle state.</param>
/// <param name="SiloStatus">Orleans membership status of its silo (<c>Active</c>, <c>ShuttingDown</c>, <c>Dead</c>, ...).</param>
/// <param name="ExpertsAssigned">Experts the active plan assigns to it.</param>
/// <param name="LastStatus">Its shard's last report (resident bytes, state), or null.</param>
/// <param name="LastReportUnixMs">When that report arrived.</param>
[GenerateSerializer, Immutable, Alias("distributed.WorkerView")]
public sealed record WorkerView(
    [property: Id(0)] WorkerDescriptor Descriptor,
    [property: Id(1)] WorkerState State,
    [property: Id(2)] string SiloStatus,
    [property: Id(3)] int ExpertsAssigned,
    [property: Id(4)] ShardStatus? LastStatus,
    [property: Id(5)] long LastReportUnixMs);

/// <summary>The cluster as the placement grain sees it.</summary>
/// <param name="Workers">Registered workers, by id.</param>
/// <param name="Snapshot">The plan snapshot.</param>
/// <param name="AutoPlaceJoiningWorkers">Whether joining workers get experts without an explicit rebalance.</param>
[GenerateSerializer, Immutable, Alias("distributed.ClusterView")]
public sealed record ClusterView(
    [property: Id(0)] WorkerView[] Workers,
    [property: Id(1)] PlacementSnapshot Snapshot,
    [property: Id(2)] bool AutoPlaceJoiningWorkers);

/// <summary>Outcome of a coordinator's report that a worker is unreachable.</summary>
public enum UnreachableVerdict
{
    /// <summary>The worker is not registered (already removed).</summary>
    Unknown = 0,
    /// <summary>Confirmed gone (membership dead or its shard grain did not answer): removed, and a repair plan staged.</summary>
    Removed = 1,
    /// <summary>Its shard grain answered: the worker is alive; the coordinator should reconnect.</summary>
    Alive = 2,
}
