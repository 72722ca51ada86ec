using System.Diagnostics;
using Distributed.Kernels.Experts;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Weights;

/// <summary>
/// The experts this worker serves, as immutable snapshots: applying a plan loads the new experts (memory-mapped
/// slices, nothing else of the checkpoint), warms them, swaps the snapshot atomically, and releases the experts the
/// plan dropped once the last request using the old snapshot finished. Requests take a lease on one snapshot, so a
/// request never sees a half-applied plan.
/// </summary>
public sealed partial class ShardStore : IShardView, IDisposable
{
    private readonly IExpertLoader _loader;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _applyLock = new(1, 1);
    private readonly bool _warmUp;
    private ShardSnapshot _current;
    private ShardState _state = ShardState.Empty;
    private string? _error;

    /// <summary>Creates an empty store.</summary>
    public ShardStore(string workerId, ModelDescriptor model, IExpertLoader loader, int maxRowsPerDispatch, bool warmUp, ILogger<ShardStore> logger)
    {
        WorkerId = workerId;
        Model = model;
        _loader = loader;
        MaxRowsPerDispatch = maxRowsPerDispatch;
        _warmUp = warmUp;
        _logger = logger;
        _current = new ShardSnapshot(0, ShardManifest.Empty, new Dictionary<ExpertKey, ExpertWeights>(), []);
    }

    /// <summary>This worker's id.</summary>
    public string WorkerId { get; }

    /// <inheritdoc />
    public ModelDescriptor Model { get; }

    /// <inheritdoc />
    public int MaxRowsPerDispatch { get; }

    /// <summary>The backend the experts run on.</summary>
    public Kernels.IKernelBackend Backend => _loader.Backend;

    /// <inheritdoc />
    public ulong PlanVersion => Volatile.Read(ref _current).Version;

    /// <summary>The experts currently served.</summary>
    public ShardManifest Manifest => Volatile.Read(ref _current).Manifest;

    /// <inheritdoc />
    public bool Holds(int layer, int expert) => Volatile.Read(ref _current).Manifest.Contains(new ExpertKey(layer, expert));

    /// <summary>The shard's lifecycle state.</summary>
    public ShardStatus Status
    {
        get
        {
            var s = Volatile.Read(ref _current);
            return new ShardStatus(WorkerId, (long)s.Version, _state, s.Manifest.Count, s.ResidentBytes, _error);
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
    /// Makes this worker serve exactly <paramref name="target"/> at plan <paramref name="version"/>: loads and warms what
    /// is new, swaps, and releases what was dropped once in-flight requests finished. Serialized with other applies.
    /// </summary>
    /// <exception cref="Kernels.Checkpoint.CheckpointException">A slice could not be loaded (state becomes Failed).</exception>
    public async Task<ShardStatus> ApplyAsync(ulong version, ShardManifest target, CancellationToken cancellationToken)
    {
        await _applyLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var old = Volatile.Read(ref _current);
            var weights = new Dictionary<ExpertKey, ExpertWeights>();
            var added = new List<ExpertWeights>();
            long start = Stopwatch.GetTimestamp();
            try
            {
                _state = ShardState.Loading;
                foreach (var key in target.Experts)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    if (old.Weights.TryGetValue(key, out var kept))
                    {
                        weights[key] = kept;
                        continue;
                    }
                    var loaded = await Task.Run(() => _loader.Load(key.Layer, key.Expert), cancellationToken).ConfigureAwait(false);
                    added.Add(loaded);
                    weights[key] = loaded;
                }
                if (_warmUp && added.Count > 0)
                {
                    _state = ShardState.Warming;
                    await Task.Run(() => Warm(added), cancellationToken).ConfigureAwait(false);
                }
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
            var dropped = old.Weights.Where(kv => !target.Contains(kv.Key)).Select(kv => kv.Value).ToList();
            var next = new ShardSnapshot(version, target, weights, []);
            old.RetireWith(dropped);
            Volatile.Write(ref _current, next);
            old.Release();
            _state = target.Count == 0 ? ShardState.Empty : ShardState.Serving;
            _error = null;
            LogApplied(version, target.Count, added.Count, dropped.Count, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            return Status;
        }
        finally
        {
            _applyLock.Release();
        }
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
        var s = Interlocked.Exchange(ref _current, new ShardSnapshot(0, ShardManifest.Empty, new Dictionary<ExpertKey, ExpertWeights>(), []));
        s.RetireWith([.. s.Weights.Values]);
        s.Release();
        _applyLock.Dispose();
    }

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardApplied, Level = LogLevel.Information,
        Message = "Shard serves plan {PlanVersion}: {Experts} experts ({Added} loaded, {Dropped} released) in {ElapsedMs:F1} ms")]
    private partial void LogApplied(ulong planVersion, int experts, int added, int dropped, double elapsedMs);

    [LoggerMessage(EventId = Diagnostics.LogEvents.ShardApplyFailed, Level = LogLevel.Error,
        Message = "Shard failed to load plan {PlanVersion}: {Reason}")]
    private partial void LogApplyFailed(Exception exception, ulong planVersion, string reason);
}

/// <summary>
/// One immutable set of served experts with a lease count. The store holds one lease while the snapshot is current;
/// when the count reaches zero after retirement, the experts the next plan dropped are disposed.
/// </summary>
public sealed class ShardSnapshot : IDisposable
{
    private int _leases = 1;
    private List<ExpertWeights> _toRelease;

    internal ShardSnapshot(ulong version, ShardManifest manifest, IReadOnlyDictionary<ExpertKey, ExpertWeights> weights, List<ExpertWeights> toRelease)
    {
        Version = version;
        Manifest = manifest;
        Weights = weights;
        _toRelease = toRelease;
        ResidentBytes = weights.Values.Sum(w => w.ResidentBytes);
    }

    /// <summary>Plan version.</summary>
    public ulong Version { get; }

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
