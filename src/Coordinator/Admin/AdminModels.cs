namespace Distributed.Coordinator.Admin;

/// <summary><c>GET /admin/v1/cluster</c>: the workers and the plan state.</summary>
/// <param name="ModelFingerprint">The model every worker serves.</param>
/// <param name="PlanVersion">Active plan version (0 = none yet).</param>
/// <param name="StagedVersion">Version of a change staging, or null.</param>
/// <param name="Serving">True when the active plan covers every expert and every worker holding experts serves it.</param>
/// <param name="Problem">Why it does not serve every expert, or null.</param>
/// <param name="AutoPlaceJoiningWorkers">Whether joining workers get experts without an explicit rebalance.</param>
/// <param name="Workers">Registered workers by id.</param>
public sealed record ClusterInfo(string ModelFingerprint, long PlanVersion, long? StagedVersion, bool Serving, string? Problem,
    bool AutoPlaceJoiningWorkers, IReadOnlyList<WorkerInfo> Workers);

/// <summary>One worker.</summary>
/// <param name="Id">Worker id.</param>
/// <param name="GrpcEndpoint">Data-plane address.</param>
/// <param name="SiloAddress">Orleans silo address.</param>
/// <param name="HostId">Machine identity.</param>
/// <param name="State"><c>Active</c>, <c>Joining</c>, <c>Draining</c>, <c>Drained</c> (safe to stop) or <c>NotReady</c>.</param>
/// <param name="SiloStatus">Orleans membership status (<c>Active</c>, <c>ShuttingDown</c>, <c>Dead</c>, ...).</param>
/// <param name="Health"><c>healthy</c> when its silo is active and its shard answered now, else <c>unhealthy</c>.</param>
/// <param name="MemoryCapacityBytes">Bytes of expert weights it may hold.</param>
/// <param name="ResidentBytes">Bytes of expert weights it holds now.</param>
/// <param name="ExpertsAssigned">Experts the active plan assigns to it.</param>
/// <param name="ExpertsHeld">Experts it holds now (assigned, staged and retiring together).</param>
/// <param name="ShardState"><c>Empty</c>, <c>Loading</c>, <c>Warming</c>, <c>Serving</c>, <c>Failed</c> or <c>Staged</c>.</param>
/// <param name="LastReportUnixMs">When its shard last reported to the placement grain, or null.</param>
/// <param name="Error">Its shard's last load error, or null.</param>
public sealed record WorkerInfo(string Id, string GrpcEndpoint, string SiloAddress, string HostId, string State, string SiloStatus, string Health,
    long MemoryCapacityBytes, long ResidentBytes, int ExpertsAssigned, int ExpertsHeld, string ShardState, long? LastReportUnixMs, string? Error);

/// <summary>
/// <c>GET /admin/v1/serving</c>: this coordinator's scheduler, now and since it started. Counters only grow; a reader
/// takes two snapshots and divides the differences by the time between them (tokens/s) or by each other (mean time to
/// first token, mean time between tokens over the interval), as the dashboard does.
/// </summary>
/// <param name="UptimeSeconds">Seconds since the scheduler started (the denominator of since-start rates).</param>
/// <param name="Queued">Requests waiting for admission.</param>
/// <param name="Running">Sequences in the running batch.</param>
/// <param name="KvBlocksUsed">KV cache blocks held by sequences.</param>
/// <param name="KvBlocksCached">Unreferenced KV blocks kept for their token prefix (reusable; evicted least recently used first).</param>
/// <param name="KvBlocksTotal">KV blocks in the memory budget.</param>
/// <param name="Steps">Forward steps run.</param>
/// <param name="TokensGenerated">Output tokens generated.</param>
/// <param name="RequestsFinished">Requests that ended with a finish reason.</param>
/// <param name="FirstTokens">Requests that got their first token.</param>
/// <param name="TimeToFirstTokenSecondsSum">Sum of submission → first token over <paramref name="FirstTokens"/>.</param>
/// <param name="LaterTokens">Tokens after each request's first.</param>
/// <param name="InterTokenSecondsSum">Sum of the gaps before each of <paramref name="LaterTokens"/>.</param>
/// <param name="PrefixQueriedTokens">Tokens admitted sequences looked up in the prefix cache.</param>
/// <param name="PrefixHitTokens">Of those, tokens found cached (not computed again).</param>
/// <param name="PrefixHitRate"><paramref name="PrefixHitTokens"/> / <paramref name="PrefixQueriedTokens"/> since start (0 before any).</param>
/// <param name="PrefixEvictions">Cached blocks evicted to make room.</param>
/// <param name="Preemptions">Sequences preempted (blocks freed, recomputed later) because KV blocks ran out.</param>
public sealed record ServingInfo(double UptimeSeconds, int Queued, int Running, int KvBlocksUsed, int KvBlocksCached, int KvBlocksTotal, long Steps,
    long TokensGenerated, long RequestsFinished, long FirstTokens, double TimeToFirstTokenSecondsSum, long LaterTokens, double InterTokenSecondsSum,
    long PrefixQueriedTokens, long PrefixHitTokens, double PrefixHitRate, long PrefixEvictions, long Preemptions);

/// <summary><c>GET /admin/v1/placement</c>: per MoE layer, which workers hold each expert.</summary>
/// <param name="PlanVersion">Plan version.</param>
/// <param name="StagedVersion">Version of a change staging, or null.</param>
/// <param name="Serving">Whether the plan serves every expert.</param>
/// <param name="Workers">Workers listed in the plan (some may hold nothing, e.g. drained ones).</param>
/// <param name="Layers">MoE layers, ascending.</param>
public sealed record PlacementInfo(long PlanVersion, long? StagedVersion, bool Serving, IReadOnlyList<string> Workers, IReadOnlyList<LayerPlacementInfo> Layers);

/// <summary>One MoE layer of a plan.</summary>
/// <param name="Layer">Decoder layer index.</param>
/// <param name="Experts">Every expert, ascending.</param>
public sealed record LayerPlacementInfo(int Layer, IReadOnlyList<ExpertHoldersInfo> Experts);

/// <summary>The holders of one expert.</summary>
/// <param name="Expert">Expert id.</param>
/// <param name="Workers">Worker ids, primary first.</param>
public sealed record ExpertHoldersInfo(int Expert, IReadOnlyList<string> Workers);

/// <summary><c>GET /admin/v1/experts/load</c>: routed tokens and per-worker data-plane figures seen by this coordinator.</summary>
/// <param name="WindowSeconds">Length of the recent window.</param>
/// <param name="Layers">Per MoE layer: rows routed to each expert recently and in total.</param>
/// <param name="Workers">Per worker: requests, rows, bytes and dispatch latency.</param>
public sealed record ExpertLoadInfo(double WindowSeconds, IReadOnlyList<LayerLoadInfo> Layers, IReadOnlyList<WorkerLoadInfo> Workers);

/// <summary>Routed rows per expert of one MoE layer.</summary>
/// <param name="Layer">Decoder layer index.</param>
/// <param name="RecentTokens">Per expert, over the recent window.</param>
/// <param name="TotalTokens">Per expert, since the coordinator started.</param>
public sealed record LayerLoadInfo(int Layer, long[] RecentTokens, long[] TotalTokens);

/// <summary>Data-plane figures of one worker.</summary>
/// <param name="WorkerId">Worker id.</param>
/// <param name="Requests">Requests answered.</param>
/// <param name="Rows">Rows those carried.</param>
/// <param name="BytesSent">Row bytes sent.</param>
/// <param name="BytesReceived">Row bytes received.</param>
/// <param name="MeanLatencyMs">Mean send-to-reply time.</param>
/// <param name="MaxLatencyMs">Longest send-to-reply time.</param>
/// <param name="Failures">Requests that failed (lost connection, deadline, refusal).</param>
/// <param name="OutstandingRows">Rows in flight now.</param>
public sealed record WorkerLoadInfo(string WorkerId, long Requests, long Rows, long BytesSent, long BytesReceived, double MeanLatencyMs, double MaxLatencyMs,
    long Failures, long OutstandingRows);

/// <summary>A plan change (<c>GET /admin/v1/operations/{id}</c>).</summary>
/// <param name="Id">Operation id.</param>
/// <param name="Kind"><c>Initial</c>, <c>Join</c>, <c>Repair</c>, <c>Drain</c>, <c>Replicas</c> or <c>Rebalance</c>.</param>
/// <param name="State"><c>Staging</c>, <c>Completed</c> or <c>Failed</c>.</param>
/// <param name="BaseVersion">Active plan version when it started.</param>
/// <param name="TargetVersion">Plan version it stages.</param>
/// <param name="Description">What it changes.</param>
/// <param name="Error">Why it failed, or null.</param>
/// <param name="WorkersStaged">Workers that loaded their part.</param>
/// <param name="WorkersTotal">Workers in the target plan.</param>
/// <param name="CreatedUnixMs">Start time.</param>
/// <param name="FinishedUnixMs">Completion or failure time, or null while staging.</param>
public sealed record OperationInfo(string Id, string Kind, string State, long BaseVersion, long TargetVersion, string Description, string? Error,
    int WorkersStaged, int WorkersTotal, long CreatedUnixMs, long? FinishedUnixMs);

/// <summary><c>POST /admin/v1/experts/replicas</c> body: replicas to add and to remove (all or nothing).</summary>
/// <param name="Add">Replicas to add (worker omitted = the least-filled worker with room).</param>
/// <param name="Remove">Replicas to remove (worker omitted = the most-filled holder).</param>
public sealed record ReplicaChangeRequest(IReadOnlyList<ReplicaTarget>? Add, IReadOnlyList<ReplicaTarget>? Remove);

/// <summary>One replica of one expert.</summary>
/// <param name="Layer">MoE layer.</param>
/// <param name="Expert">Expert id.</param>
/// <param name="Worker">Worker id, or null to let the cluster choose.</param>
public sealed record ReplicaTarget(
    [property: System.Text.Json.Serialization.JsonRequired] int Layer,
    [property: System.Text.Json.Serialization.JsonRequired] int Expert,
    string? Worker = null);

/// <summary><c>POST /admin/v1/rebalance</c> body.</summary>
/// <param name="DryRun">Only return the proposed plan and its predicted balance.</param>
/// <param name="ExtraReplicasPerLayer">Replicas beyond one copy per expert for the hottest experts of each layer;
/// null = one per worker, limited by memory.</param>
/// <param name="LoadWindow"><c>recent</c> (default: the recent window) or <c>total</c> (since the coordinator started).</param>
public sealed record RebalanceRequestBody(bool DryRun = false, int? ExtraReplicasPerLayer = null, string? LoadWindow = null);

/// <summary>Answer to a rebalance.</summary>
/// <param name="DryRun">True when nothing was changed.</param>
/// <param name="Operation">The staged change (null on a dry run).</param>
/// <param name="Proposed">The proposed plan.</param>
/// <param name="Before">Predicted balance of the active plan under the measured load.</param>
/// <param name="After">Predicted balance of the proposed plan.</param>
/// <param name="ExpertsMoved">Expert copies the change loads somewhere.</param>
public sealed record RebalanceResult(bool DryRun, OperationInfo? Operation, PlacementInfo Proposed, BalanceInfo Before, BalanceInfo After, int ExpertsMoved);

/// <summary>Predicted balance of a plan.</summary>
/// <param name="MaxOverMean">Mean over MoE layers of (busiest worker's load ÷ mean worker load); 1 = perfect.</param>
/// <param name="WorstLayerMaxOverMean">The worst layer's ratio.</param>
/// <param name="WorkerLoad">Share of all routed tokens per worker.</param>
public sealed record BalanceInfo(double MaxOverMean, double WorstLayerMaxOverMean, IReadOnlyDictionary<string, double> WorkerLoad);

/// <summary>Error body of every failed admin call.</summary>
/// <param name="Error">The error.</param>
public sealed record AdminErrorResponse(AdminErrorBody Error);

/// <summary>An admin error.</summary>
/// <param name="Code">Stable code: <c>unauthorized</c>, <c>unknown_worker</c>, <c>unknown_expert</c>, <c>unknown_operation</c>,
/// <c>invalid_argument</c>, <c>insufficient_memory</c>, <c>last_holder</c>, <c>change_in_progress</c>, <c>no_plan</c>, <c>unavailable</c>.</param>
/// <param name="Message">What is wrong.</param>
/// <param name="Field">The request field at fault, or null.</param>
public sealed record AdminErrorBody(string Code, string Message, string? Field);
