using Distributed.ExpertWorker.Placement;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Grains;

/// <summary>Persisted state of the placement grain: the plan as MessagePack bytes (<see cref="PlacementPlanCodec"/>) and the registered workers.</summary>
[GenerateSerializer, Alias("distributed.PlacementGrainState")]
public sealed class PlacementGrainState
{
    /// <summary><see cref="PlacementPlanCodec"/> bytes of the current plan (empty before the first plan).</summary>
    [Id(0)]
    public byte[] Plan { get; set; } = [];

    /// <summary>Registered workers.</summary>
    [Id(1)]
    public List<WorkerDescriptor> Workers { get; set; } = [];
}

/// <summary>
/// The cluster's placement authority (see <see cref="IPlacementGrain"/>). Registrations mark the plan dirty; a timer
/// rebuilds it once registrations have been quiet for <see cref="PlacementOptions.SettleDelay"/> and drops workers
/// whose silo membership declared dead. Each rebuild bumps the version, persists the plan, and clears readiness
/// until each worker reports its shard serving the new version.
/// </summary>
public sealed partial class PlacementGrain(
    [PersistentState("placement", PlacementGrain.StorageName)] IPersistentState<PlacementGrainState> state,
    IClusterMembershipService membership,
    IOptions<PlacementOptions> options,
    ILogger<PlacementGrain> logger) : Grain, IPlacementGrain
{
    /// <summary>Grain storage provider name the silo must register.</summary>
    public const string StorageName = "placement";

    private static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(20);
    private readonly Dictionary<string, WorkerDescriptor> _workers = new(StringComparer.Ordinal);
    private readonly HashSet<string> _ready = new(StringComparer.Ordinal);
    private PlacementPlan _plan = PlacementPlan.Empty;
    private ModelDescriptor? _model;
    private long _generation;
    private bool _dirty;
    private DateTime _lastChangeUtc;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <inheritdoc />
    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        if (state.State.Plan.Length > 0)
        {
            _plan = PlacementPlanCodec.Deserialize(state.State.Plan);
            _model = _plan.Model;
        }
        foreach (var w in state.State.Workers)
        {
            _workers[w.WorkerId] = w;
            _model ??= w.Model;
        }
        _generation = _plan.Version * 1_000_000;
        this.RegisterGrainTimer(TickAsync, new GrainTimerCreationOptions(options.Value.CheckInterval, options.Value.CheckInterval) { KeepAlive = true });
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public Task<PlacementSnapshot> RegisterWorkerAsync(WorkerDescriptor worker)
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
        if (!_workers.TryGetValue(worker.WorkerId, out var known) || known != worker)
        {
            _workers[worker.WorkerId] = worker;
            LogMembership(worker.WorkerId, "registered", worker.GrpcEndpoint);
            MarkDirty();
        }
        return Task.FromResult(Snapshot());
    }

    /// <inheritdoc />
    public Task UnregisterWorkerAsync(string workerId)
    {
        if (_workers.Remove(workerId))
        {
            LogMembership(workerId, "unregistered", "");
            MarkDirty();
        }
        return Task.CompletedTask;
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
    public Task ReportShardStatusAsync(ShardStatus status)
    {
        ArgumentNullException.ThrowIfNull(status);
        if (status.PlanVersion != _plan.Version || _plan.IndexOf(status.WorkerId) < 0)
        {
            return Task.CompletedTask;
        }
        bool changed = status.State == ShardState.Serving || (status.State == ShardState.Empty && _plan.ShardOf(_plan.IndexOf(status.WorkerId)).Count == 0)
            ? _ready.Add(status.WorkerId)
            : _ready.Remove(status.WorkerId);
        if (changed)
        {
            Bump();
        }
        return Task.CompletedTask;
    }

    private async Task TickAsync(CancellationToken cancellationToken)
    {
        var snapshot = membership.CurrentSnapshot;
        foreach (var w in _workers.Values.ToList())
        {
            if (SiloAddress.FromParsableString(w.SiloAddress) is { } silo && snapshot.GetSiloStatus(silo) == SiloStatus.Dead)
            {
                _workers.Remove(w.WorkerId);
                LogMembership(w.WorkerId, "left (silo dead)", w.GrpcEndpoint);
                MarkDirty();
            }
        }
        if (_dirty && DateTime.UtcNow - _lastChangeUtc >= options.Value.SettleDelay && _model is not null)
        {
            _dirty = false;
            var plan = PlacementPlanner.Build(_plan.Version + 1, _model, _workers.Values, options.Value.ReplicationFactor,
                DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            _plan = plan;
            _ready.Clear();
            state.State.Plan = PlacementPlanCodec.Serialize(plan);
            state.State.Workers = [.. _workers.Values];
            await state.WriteStateAsync(cancellationToken);
            LogRebuilt(plan.Version, plan.Workers.Length, plan.CoversAllExperts);
            Bump();
        }
    }

    private void MarkDirty()
    {
        _dirty = true;
        _lastChangeUtc = DateTime.UtcNow;
    }

    private void Bump()
    {
        _generation++;
        var old = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        old.TrySetResult();
    }

    private PlacementSnapshot Snapshot() => new(_plan, [.. _ready.Order(StringComparer.Ordinal)], _generation);

    [LoggerMessage(EventId = Diagnostics.LogEvents.PlanRebuilt, Level = LogLevel.Information,
        Message = "Placement plan {PlanVersion} built for {Workers} workers (covers every expert: {Covers})")]
    private partial void LogRebuilt(long planVersion, int workers, bool covers);

    [LoggerMessage(EventId = Diagnostics.LogEvents.WorkerMembership, Level = LogLevel.Information,
        Message = "Worker {WorkerId} {Change} {Endpoint}")]
    private partial void LogMembership(string workerId, string change, string endpoint);
}
