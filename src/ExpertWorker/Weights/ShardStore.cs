using System.Diagnostics;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Weights;

/// <summary>
/// The experts this worker serves, as immutable snapshots. A plan change is staged: <see cref="StageAsync"/> loads and
/// warms the next version's new experts while the current version keeps serving, and from then on requests routed with
/// either version are accepted; <see cref="ApplyAsync"/> commits a version, keeps serving the previous one for
/// <c>retireDelay</c> (coordinators switch tables at their own pace) and then releases what the committed version no
/// longer holds. Requests take a lease on one snapshot, so a request never sees a half-applied plan, and dropped
/// weights are freed once the last request using them finished.
/// </summary>
public sealed partial class ShardStore : IShardView, IDisposable
{
    private readonly IExpertLoader _loader;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _applyLock = new(1, 1);
    private readonly bool _warmUp;
    private readonly TimeSpan _retireDelay;
    private readonly TimeProvider _time;
    private Task _retirement = Task.CompletedTask;
    private readonly CancellationTokenSource _disposed = new();
    private ShardSnapshot _current;
    private ShardManifest _committedTarget = ShardManifest.Empty;
    private ulong _stagedVersion;
    private ShardManifest? _stagedTarget;
    private ShardState _state = ShardState.Empty;
    private string? _error;

    /// <summary>Creates an empty store.</summary>
    /// <param name="retireDelay">How long a committed-away version stays accepted (and its experts resident) after a
    /// newer version was committed; zero releases at once.</param>
    /// <param name="timeProvider">The clock the retire delay runs on (the system clock when null).</param>
    public ShardStore(string workerId, ModelDescriptor model, IExpertLoader loader, int maxRowsPerDispatch, bool warmUp, ILogger<ShardStore> logger,
        TimeSpan retireDelay = default, TimeProvider? timeProvider = null)
    {
        _time = timeProvider ?? TimeProvider.System;
        WorkerId = workerId;
        Model = model;
        _loader = loader;
        MaxRowsPerDispatch = maxRowsPerDispatch;
        _warmUp = warmUp;
        _logger = logger;
        _retireDelay = retireDelay < TimeSpan.Zero ? TimeSpan.Zero : retireDelay;
        _current = new ShardSnapshot(0, [0], ShardManifest.Empty, new Dictionary<ExpertKey, ExpertWeights>(), []);
    }

    /// <summary>The last retirement scheduled by a commit (completed when none is pending): it ends once the
    /// committed-away version is released, skipped (superseded) or the store is disposed. For tests and shutdown.</summary>
    internal Task PendingRetirement => Volatile.Read(ref _retirement);

    /// <summary>This worker's id.</summary>
    public string WorkerId { get; }

    /// <inheritdoc />
    public ModelDescriptor Model { get; }

    /// <inheritdoc />
    public int MaxRowsPerDispatch { get; }

    /// <summary>The backend the experts run on.</summary>
    public Kernels.IKernelBackend Backend => _loader.Backend;

    /// <summary>The committed plan version (what the worker announces in its handshake).</summary>
    public ulong PlanVersion => Volatile.Read(ref _current).Version;

    /// <summary>The experts currently resident and served (committed, staged and retiring ones together).</summary>
    public ShardManifest Manifest => Volatile.Read(ref _current).Manifest;

    /// <inheritdoc />
    public bool AcceptsPlanVersion(ulong version) => Array.IndexOf(Volatile.Read(ref _current).AcceptedVersions, version) >= 0;

    /// <inheritdoc />
    public bool Holds(int layer, int expert) => Volatile.Read(ref _current).Manifest.Contains(new ExpertKey(layer, expert));

    /// <summary>The shard's lifecycle state.</summary>
    public ShardStatus Status
    {
        get
        {
            var s = Volatile.Read(ref _current);
            return new ShardStatus(WorkerId, (long)s.Version, _state, s.Manifest.Count, s.ResidentBytes, _error, (long)Volatile.Read(ref _stagedVersion));
        }
    }

    /// <summary>Takes a lease on the current snapshot; dispose it when the request is done.</summary>
    public ShardSnapshot Acquire()
    {
        while (true)
        {
            var s = Volatile.Read(ref _current);
            if (s.TryAddLease())
            {
                return s;
            }
        }
    }

    /// <summary>
    /// Loads and warms every expert of <paramref name="target"/> not yet resident and starts accepting requests routed
    /// with <paramref name="version"/>, while the committed version keeps serving. Nothing is released.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="version"/> is not newer than the committed version.</exception>
    /// <exception cref="Checkpoint.CheckpointException">A slice could not be loaded (state becomes Failed, the committed version keeps serving).</exception>
    public async Task<ShardStatus> StageAsync(ulong version, ShardManifest target, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(target);
        await _applyLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var old = Volatile.Read(ref _current);
            if (version <= old.Version)
            {
                throw new ArgumentOutOfRangeException(nameof(version), version, $"staged version must be newer than the committed version {old.Version}");
            }
            long start = Stopwatch.GetTimestamp();
            var stateBefore = _state;
            Dictionary<ExpertKey, ExpertWeights> weights;
            List<ExpertWeights> added;
            try
            {
                (weights, added) = await LoadMissingAsync(version, old, target, reportProgress: old.Version == 0, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                // The committed version keeps serving: the failure is the staged change's (Error says why).
                _state = stateBefore;
                throw;
            }
            foreach (var (key, w) in old.Weights)
            {
                weights.TryAdd(key, w);
            }
            ulong abandoned = Volatile.Read(ref _stagedVersion);
            var accepted = old.AcceptedVersions.Where(v => v != abandoned || v == old.Version).Append(version).Distinct().ToArray();
            Swap(old, new ShardSnapshot(old.Version, accepted, new ShardManifest(weights.Keys), weights, []), []);
            _stagedTarget = target;
            Volatile.Write(ref _stagedVersion, version);
            _state = ShardState.Staged;
            _error = null;
            LogStaged(version, target.Count, added.Count, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            return Status;
        }
        finally
        {
            _applyLock.Release();
        }
    }

    /// <summary>
    /// Commits version <paramref name="version"/> with exactly <paramref name="target"/>: loads (and warms) whatever is
    /// missing, then serves it. The previous committed version stays accepted, with its experts resident, for the retire
    /// delay; after that every expert outside <paramref name="target"/> is released (freed once in-flight requests end).
    /// Re-applying the committed version drops anything staged for an abandoned version.
    /// </summary>
    /// <exception cref="Checkpoint.CheckpointException">A slice could not be loaded (state becomes Failed).</exception>
    public async Task<ShardStatus> ApplyAsync(ulong version, ShardManifest target, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(target);
        await _applyLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var old = Volatile.Read(ref _current);
            long start = Stopwatch.GetTimestamp();
            var (weights, added) = await LoadMissingAsync(version, old, target, reportProgress: true, cancellationToken).ConfigureAwait(false);
            ulong previous = old.Version;
            bool grace = _retireDelay > TimeSpan.Zero && previous != version && previous != 0 && old.Manifest.Count > 0;
            // A newer version staged before this commit arrived stays staged; re-applying the committed version abandons it.
            ulong staged = Volatile.Read(ref _stagedVersion);
            var keepStaged = staged > version && version != previous ? _stagedTarget : null;
            foreach (var (key, w) in old.Weights)
            {
                if (grace || (keepStaged?.Contains(key) ?? false))
                {
                    weights.TryAdd(key, w);
                }
            }
            var accepted = new List<ulong> { version };
            if (grace)
            {
                accepted.Add(previous);
            }
            if (keepStaged is not null)
            {
                accepted.Add(staged);
            }
            var release = old.Weights.Where(kv => !weights.ContainsKey(kv.Key)).Select(kv => kv.Value).ToList();
            Swap(old, new ShardSnapshot(version, [.. accepted.Distinct()], new ShardManifest(weights.Keys), weights, []), release);
            int dropped = release.Count + (grace ? weights.Keys.Count(k => !target.Contains(k) && !(keepStaged?.Contains(k) ?? false)) : 0);
            if (grace)
            {
                _retirement = RetireLaterAsync(version, target);
            }
            _committedTarget = target;
            if (keepStaged is null)
            {
                _stagedTarget = null;
                Volatile.Write(ref _stagedVersion, 0UL);
            }
            _state = keepStaged is not null ? ShardState.Staged : target.Count == 0 ? ShardState.Empty : ShardState.Serving;
            _error = null;
            LogApplied(version, target.Count, added.Count, dropped, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            return Status;
        }
        finally
        {
            _applyLock.Release();
        }
    }

    // reportProgress: show Loading/Warming in the state; a stage next to a serving committed version stays Serving.
    private async Task<(Dictionary<ExpertKey, ExpertWeights> Weights, List<ExpertWeights> Added)> LoadMissingAsync(
        ulong version, ShardSnapshot old, ShardManifest target, bool reportProgress, CancellationToken cancellationToken)
    {
        var weights = new Dictionary<ExpertKey, ExpertWeights>();
        var added = new List<ExpertWeights>();
        var previousState = _state;
        try
        {
            foreach (var key in target.Experts)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (old.Weights.TryGetValue(key, out var kept))
                {
                    weights[key] = kept;
                    continue;
                }
                if (reportProgress)
                {
                    _state = ShardState.Loading;
                }
                var loaded = await Task.Run(() => _loader.Load(key.Layer, key.Expert), cancellationToken).ConfigureAwait(false);
                added.Add(loaded);
                weights[key] = loaded;
            }
            if (_warmUp && added.Count > 0)
            {
                if (reportProgress)
                {
                    _state = ShardState.Warming;
                }
                await Task.Run(() => Warm(added), cancellationToken).ConfigureAwait(false);
            }
            _state = previousState;
            return (weights, added);
        }
        catch (Exception ex)
        {
            foreach (var w in added)
            {
                w.Dispose();
            }
            _state = ShardState.Failed;
            _error = ex.Message;
            LogApplyFailed(ex, version, ex.Message);
            throw;
        }
    }

    private async Task RetireLaterAsync(ulong version, ShardManifest target)
    {
        try
        {
            await Task.Delay(_retireDelay, _time, _disposed.Token).ConfigureAwait(false);
            await _applyLock.WaitAsync(_disposed.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        try
        {
            var old = Volatile.Read(ref _current);
            if (old.Version != version || !ReferenceEquals(_committedTarget, target))
            {
                return;
            }
            // Anything staged meanwhile for a newer version stays resident and accepted.
            ulong staged = Volatile.Read(ref _stagedVersion);
            var stagedTarget = staged != 0 ? _stagedTarget : null;
            var keep = new Dictionary<ExpertKey, ExpertWeights>();
            foreach (var (key, w) in old.Weights)
            {
                if (target.Contains(key) || (stagedTarget?.Contains(key) ?? false))
                {
                    keep[key] = w;
                }
            }
            var release = old.Weights.Where(kv => !keep.ContainsKey(kv.Key)).Select(kv => kv.Value).ToList();
            ulong[] accepted = staged != 0 ? [version, staged] : [version];
            Swap(old, new ShardSnapshot(version, accepted, new ShardManifest(keep.Keys), keep, []), release);
            LogRetired(version, release.Count);
        }
        finally
        {
            _applyLock.Release();
        }
    }

    private void Swap(ShardSnapshot old, ShardSnapshot next, List<ExpertWeights> release)
    {
        old.RetireWith(release);
        Volatile.Write(ref _current, next);
        old.Release();
    }

    private void Warm(List<ExpertWeights> experts)
    {
        var x = new float[Model.HiddenSize];
        var y = new float[Model.HiddenSize];
        foreach (var e in experts)
        {
            _loader.Backend.SwiGluFfn(x, 1, e.GateUp, e.Down, y);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _disposed.Cancel();
        var s = Interlocked.Exchange(ref _current, new ShardSnapshot(0, [0], ShardManifest.Empty, new Dictionary<ExpertKey, ExpertWeights>(), []));
        s.RetireWith([.. s.Weights.Values]);
        s.Release();
        _applyLock.Dispose();
        _disposed.Dispose();
    }

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardApplied, Level = LogLevel.Information,
        Message = "Shard serves plan {PlanVersion}: {Experts} experts ({Added} loaded, {Dropped} released) in {ElapsedMs:F1} ms")]
    private partial void LogApplied(ulong planVersion, int experts, int added, int dropped, double elapsedMs);

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardStaged, Level = LogLevel.Information,
        Message = "Shard staged plan {PlanVersion}: {Experts} experts ({Added} loaded) in {ElapsedMs:F1} ms")]
    private partial void LogStaged(ulong planVersion, int experts, int added, double elapsedMs);

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardRetired, Level = LogLevel.Information,
        Message = "Shard retired the versions before plan {PlanVersion}: {Released} experts released")]
    private partial void LogRetired(ulong planVersion, int released);

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardApplyFailed, Level = LogLevel.Error,
        Message = "Shard failed to load plan {PlanVersion}: {Reason}")]
    private partial void LogApplyFailed(Exception exception, ulong planVersion, string reason);
}

/// <summary>
/// One immutable set of served experts with a lease count. The store holds one lease while the snapshot is current;
/// when the count reaches zero after retirement, the experts the next snapshot dropped are disposed.
/// </summary>
public sealed class ShardSnapshot : IDisposable
{
    private int _leases = 1;
    private List<ExpertWeights> _toRelease;

    internal ShardSnapshot(ulong version, ulong[] acceptedVersions, ShardManifest manifest, IReadOnlyDictionary<ExpertKey, ExpertWeights> weights,
        List<ExpertWeights> toRelease)
    {
        Version = version;
        AcceptedVersions = acceptedVersions;
        Manifest = manifest;
        Weights = weights;
        _toRelease = toRelease;
        ResidentBytes = weights.Values.Sum(w => w.ResidentBytes);
    }

    /// <summary>Committed plan version.</summary>
    public ulong Version { get; }

    /// <summary>Plan versions whose requests this snapshot serves (committed, staged, retiring).</summary>
    public ulong[] AcceptedVersions { get; }

    /// <summary>The experts.</summary>
    public ShardManifest Manifest { get; }

    /// <summary>Loaded weights per expert.</summary>
    public IReadOnlyDictionary<ExpertKey, ExpertWeights> Weights { get; }

    /// <summary>Backend bytes of all experts.</summary>
    public long ResidentBytes { get; }

    internal bool TryAddLease()
    {
        int n = Volatile.Read(ref _leases);
        while (n > 0)
        {
            int seen = Interlocked.CompareExchange(ref _leases, n + 1, n);
            if (seen == n)
            {
                return true;
            }
            n = seen;
        }
        return false;
    }

    internal void RetireWith(List<ExpertWeights> dropped) => _toRelease = dropped;

    internal void Release()
    {
        if (Interlocked.Decrement(ref _leases) == 0)
        {
            foreach (var w in Interlocked.Exchange(ref _toRelease, []))
            {
                w.Dispose();
            }
        }
    }

    /// <summary>Ends a request's lease.</summary>
    public void Dispose() => Release();
}
