using System.Collections.Concurrent;
using Distributed.Hosting;
using Distributed.Protocol.Grains;
using Grpc.Core;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The coordinator as an Orleans client following the placement plan: it long-polls the placement grain for changes
/// and keeps the latest snapshot. <see cref="GetServingTable"/> refuses (FailedPrecondition) while the plan does not
/// cover every expert with every worker serving, or when the plan has not been confirmed for
/// <see cref="MaxPlanAge"/> (the coordinator never routes with a version it cannot vouch for).
/// </summary>
public sealed partial class ClusterPlacementFollower : IPlacementSource, IAsyncDisposable
{
    private static readonly TimeSpan PollWait = TimeSpan.FromSeconds(5);
    // How much longer than PollWait a long poll may stay unanswered before it is abandoned: a poll sent through a gateway
    // that died, or to the placement grain's activation on a silo that died, is otherwise lost until the client's
    // response timeout (30 s), and the follower would not see the repair plan in the meantime.
    private static readonly TimeSpan PollGrace = TimeSpan.FromSeconds(2);
    // While a recovery waits for a plan without the lost workers, the follower asks for the snapshot at least this often.
    private static readonly TimeSpan RecoveryRepoll = TimeSpan.FromSeconds(1);
    private readonly IHost _client;
    private IPlacementGrain? _grainReference;
    private readonly CancellationTokenSource _stop = new();
    private readonly ILogger _logger;
    private readonly Task _loop;
    private readonly string _where;
    private readonly TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConnectionRetryFilter _retry;
    private bool _hasServed;
    private long _lastRetryLogTicks;
    private long _suppressedRetries;
    private readonly ConcurrentDictionary<(string Worker, ulong Version), Lazy<Task<UnreachableVerdict>>> _reports = new();
    private PlacementSnapshot? _snapshot;
    private ExpertPlacementTable? _table;
    private DateTime _confirmedUtc;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _repoll = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ClusterPlacementFollower(IHost client, ExpertClusterOptions cluster, ConnectionRetryFilter retry, ILogger logger, TimeSpan maxPlanAge)
    {
        _client = client;
        _retry = retry;
        _logger = logger;
        _where = Describe(cluster);
        MaxPlanAge = maxPlanAge;
        _loop = Task.Run(RunAsync);
    }

    /// <summary>Longest time since the plan was last confirmed by the placement grain before dispatch is refused.</summary>
    public TimeSpan MaxPlanAge { get; }

    /// <summary>Longest <see cref="RecoverAsync"/> waits for a plan without the unreachable workers. Default: 60 s.</summary>
    public TimeSpan RecoveryTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>The placement grain (admin calls).</summary>
    /// <exception cref="InvalidOperationException">Not connected to the cluster yet.</exception>
    public IPlacementGrain PlacementGrain => Grain;

    // A grain reference resolves its implementation from the cluster's manifest, which the client has once connected.
    private IPlacementGrain Grain => Volatile.Read(ref _grainReference)
        ?? throw new InvalidOperationException($"not connected to the expert cluster ({_where}) yet");

    /// <summary>The latest snapshot, or null before the first answer.</summary>
    public PlacementSnapshot? Snapshot => Volatile.Read(ref _snapshot);

    /// <summary>The Orleans client (admin calls).</summary>
    public IClusterClient ClusterClient => _client.Services.GetRequiredService<IClusterClient>();

    /// <summary>True once the client has connected to a gateway of the cluster.</summary>
    public bool IsConnected => _connected.Task.IsCompletedSuccessfully;

    /// <summary>True once a plan serving every expert has been seen (readiness distinguishes "never ready" from a change in progress).</summary>
    public bool HasServed => Volatile.Read(ref _hasServed);

    /// <summary>
    /// Creates an Orleans client of the cluster and starts following the plan in the background: the client keeps
    /// trying to reach a gateway (the cluster may have no worker yet) until it connects or this object is disposed;
    /// until then <see cref="GetServingTable"/> refuses with the reason.
    /// </summary>
    /// <exception cref="ArgumentException">Invalid cluster options (every problem listed).</exception>
    public static ClusterPlacementFollower Create(ExpertClusterOptions cluster, ClusterCredentials? tls, ILoggerFactory loggerFactory, TimeSpan? maxPlanAge = null)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        ArgumentNullException.ThrowIfNull(loggerFactory);
        var errors = cluster.Validate(isSilo: false);
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [], DisableDefaults = true });
        builder.Services.AddSingleton(loggerFactory);
        builder.Services.AddSingleton(typeof(ILogger<>), typeof(Logger<>));
        var retry = new ConnectionRetryFilter(loggerFactory.CreateLogger<ClusterPlacementFollower>(), Describe(cluster));
        builder.Services.AddSingleton<IClientConnectionRetryFilter>(retry);
        builder.UseOrleansClient(client => client.UseExpertClustering(cluster, tls));
        var host = builder.Build();
        return new ClusterPlacementFollower(host, cluster, retry, loggerFactory.CreateLogger<ClusterPlacementFollower>(), maxPlanAge ?? TimeSpan.FromSeconds(30));
    }

    /// <summary><see cref="Create"/>, then waits until the client has connected.</summary>
    /// <exception cref="ArgumentException">Invalid cluster options (every problem listed).</exception>
    /// <exception cref="TimeoutException">No gateway answered within <see cref="ExpertClusterOptions.ConnectTimeout"/>.</exception>
    public static async Task<ClusterPlacementFollower> StartAsync(ExpertClusterOptions cluster, ILoggerFactory loggerFactory,
        TimeSpan? maxPlanAge = null, CancellationToken cancellationToken = default, ClusterCredentials? tls = null)
    {
        var follower = Create(cluster, tls, loggerFactory, maxPlanAge);
        try
        {
            await follower.WaitConnectedAsync(cluster.ConnectTimeout, cancellationToken).ConfigureAwait(false);
            return follower;
        }
        catch
        {
            await follower.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Waits until the client has connected to the cluster.</summary>
    /// <exception cref="TimeoutException">Not connected within <paramref name="timeout"/>; the message names the cluster and the last error.</exception>
    public async Task WaitConnectedAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            await _connected.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"could not connect to the expert cluster ({_where}) within {timeout.TotalSeconds:F0} s: {_retry.LastError ?? "no gateway answered"}");
        }
    }

    /// <inheritdoc />
    public async ValueTask<ExpertPlacementTable> GetServingTableAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            try
            {
                return GetServingTable();
            }
            catch (ExpertDispatchException) when (HasServed && DateTime.UtcNow < deadline)
            {
                // Served before: a change or repair is under way; wait for its plan rather than fail the request.
            }
            var left = deadline - DateTime.UtcNow;
            await WaitForChangeOrRepollAsync(changed, left > TimeSpan.FromMilliseconds(1) ? left : TimeSpan.FromMilliseconds(1), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Null while the coordinator follows a plan that serves every expert; otherwise why not (readiness).</summary>
    public string? NotReadyReason()
    {
        if (!IsConnected)
        {
            return $"not connected to the expert cluster ({_where}){(_retry.LastError is { } e ? ": " + e : "")}";
        }
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

    private static string Describe(ExpertClusterOptions cluster) => cluster.Clustering switch
    {
        ClusteringMode.Redis => $"Redis membership, cluster '{cluster.ClusterId}'",
        ClusteringMode.AdoNet => $"{cluster.AdoNetInvariant} membership, cluster '{cluster.ClusterId}'",
        _ => $"localhost gateways {string.Join(",", cluster.GatewayPorts ?? [])}, cluster '{cluster.ClusterId}'",
    };

    private async Task RunAsync()
    {
        try
        {
            // Returns once a gateway answered; the retry filter keeps it trying while the cluster has none.
            await _client.StartAsync(_stop.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (_stop.IsCancellationRequested || ex is OperationCanceledException)
        {
            _connected.TrySetCanceled();
            return;
        }
        catch (Exception ex)
        {
            LogRetry($"the Orleans client stopped trying to connect: {ex.Message}");
            _connected.TrySetException(ex);
            return;
        }
        Volatile.Write(ref _grainReference, ClusterClient.GetGrain<IPlacementGrain>(IPlacementGrain.ClusterKey));
        _connected.TrySetResult();
        LogConnected(_where);
        await FollowAsync().ConfigureAwait(false);
    }

    /// <summary>Keeps a starting client trying to reach a gateway, with a growing pause, and says so in the log at most every 30 s.</summary>
    private sealed class ConnectionRetryFilter(ILogger logger, string where) : IClientConnectionRetryFilter
    {
        private int _attempts;
        private long _lastLogTicks;

        public string? LastError { get; private set; }

        public async Task<bool> ShouldRetryConnectionAttempt(Exception exception, CancellationToken cancellationToken)
        {
            LastError = exception.Message.ReplaceLineEndings(" ");
            int attempt = Interlocked.Increment(ref _attempts);
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            if (attempt == 1 || System.Diagnostics.Stopwatch.GetElapsedTime(Interlocked.Read(ref _lastLogTicks), now) >= TimeSpan.FromSeconds(30))
            {
                Interlocked.Exchange(ref _lastLogTicks, now);
                LogWaiting(logger, where, attempt, LastError);
            }
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(2000, 200 * attempt)), cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
            return !cancellationToken.IsCancellationRequested;
        }
    }

    /// <inheritdoc />
    public ExpertPlacementTable GetServingTable()
    {
        var snapshot = Volatile.Read(ref _snapshot);
        var table = Volatile.Read(ref _table);
        if (snapshot is null || table is null || !snapshot.IsServing)
        {
            throw new ExpertDispatchException(StatusCode.FailedPrecondition, snapshot is null
                ? "no placement plan received from the cluster yet"
                : $"placement plan {snapshot.Plan.Version} is not serving ({snapshot.ReadyWorkers.Length} of {snapshot.Plan.Workers.Length} workers ready, covers every expert: {snapshot.Plan.CoversAllExperts}{(snapshot.Problem is null ? "" : "; " + snapshot.Problem)})");
        }
        var age = DateTime.UtcNow - _confirmedUtc;
        if (age > MaxPlanAge)
        {
            throw new ExpertDispatchException(StatusCode.FailedPrecondition,
                $"placement plan {snapshot.Plan.Version} was last confirmed {age.TotalSeconds:F1} s ago (limit {MaxPlanAge.TotalSeconds:F0} s); refusing to dispatch with a possibly stale version");
        }
        return table;
    }

    /// <inheritdoc />
    public bool CanRecover => true;

    /// <inheritdoc />
    public async ValueTask<PlacementRecovery> RecoverAsync(IReadOnlyCollection<string> unreachableWorkers, ulong failedVersion, string reason,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(unreachableWorkers);
        var workers = unreachableWorkers.Distinct(StringComparer.Ordinal).ToList();
        var deadline = DateTime.UtcNow + RecoveryTimeout;
        UnreachableVerdict[] verdicts;
        try
        {
            var reports = Task.WhenAll(workers.Select(w => Report(w, failedVersion, reason)));
            // Membership may declare the workers dead and the authority re-place their experts before the report is
            // answered (a report sent through the dead worker's gateway waits out its attempt timeout): a serving plan
            // newer than the failed one that holds none of them is the recovery, whatever the report says later.
            while (!reports.IsCompleted)
            {
                if (ServingPlanWithout(workers, failedVersion) is { } repaired)
                {
                    _ = reports.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                    return new PlacementRecovery(repaired, []);
                }
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                {
                    throw new TimeoutException($"no answer within {RecoveryTimeout.TotalSeconds:F0} s");
                }
                var changed = Volatile.Read(ref _changed).Task;
                await Task.WhenAny(reports, WaitForChangeOrRepollAsync(changed, left, cancellationToken)).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
            verdicts = await reports.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            throw new ExpertDispatchException(StatusCode.Unavailable,
                $"worker(s) {string.Join(", ", workers)} unreachable ({reason}) and the placement authority could not be told: {ex.Message}", workers[0], inner: ex);
        }
        var alive = workers.Where((_, i) => verdicts[i] == UnreachableVerdict.Alive).ToList();
        if (alive.Count == workers.Count)
        {
            return new PlacementRecovery(GetServingTable(), alive);
        }
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            var s = Snapshot;
            var table = Volatile.Read(ref _table);
            if (s is not null && table is not null && table.Version > failedVersion)
            {
                if (s.IsServing)
                {
                    return new PlacementRecovery(GetServingTable(), alive);
                }
                if (!s.Plan.CoversAllExperts && s.Staged is null)
                {
                    throw new ExpertDispatchException(StatusCode.Unavailable,
                        $"worker(s) {string.Join(", ", workers)} lost ({reason}); placement plan {s.Plan.Version} does not serve every expert: {s.Problem ?? "some experts have no worker"}",
                        workers[0]);
                }
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
            {
                throw new ExpertDispatchException(StatusCode.Unavailable,
                    $"worker(s) {string.Join(", ", workers)} lost ({reason}); no placement plan re-placing their experts was serving within {RecoveryTimeout.TotalSeconds:F0} s (last: plan {s?.Plan.Version}, staged {s?.Staged?.Version.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"}{(s?.Problem is null ? "" : "; " + s.Problem)})",
                    workers[0]);
            }
            await WaitForChangeOrRepollAsync(changed, left, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The serving table when a plan newer than <paramref name="failedVersion"/> serves without any of <paramref name="workers"/>.</summary>
    private ExpertPlacementTable? ServingPlanWithout(List<string> workers, ulong failedVersion)
    {
        var s = Snapshot;
        var table = Volatile.Read(ref _table);
        if (s is { IsServing: true } && table is not null && table.Version > failedVersion && s.Plan.Workers.All(w => !workers.Contains(w.WorkerId, StringComparer.Ordinal)))
        {
            return GetServingTable();
        }
        return null;
    }

    /// <summary>
    /// Waits for the next snapshot, at most <paramref name="left"/>; when none came within <see cref="RecoveryRepoll"/>,
    /// makes the follow loop ask again at once instead of waiting on a long poll that may be lost with a dead silo.
    /// </summary>
    private async Task WaitForChangeOrRepollAsync(Task changed, TimeSpan left, CancellationToken cancellationToken)
    {
        var step = left < RecoveryRepoll ? left : RecoveryRepoll;
        if (await Task.WhenAny(changed, Task.Delay(step, cancellationToken)).ConfigureAwait(false) != changed && step == RecoveryRepoll)
        {
            Volatile.Read(ref _repoll).TrySetResult();
        }
        cancellationToken.ThrowIfCancellationRequested();
    }

    /// <inheritdoc />
    public void ReportUnreachable(string workerId, string reason)
    {
        var table = Volatile.Read(ref _table);
        _ = Report(workerId, table?.Version ?? 0, reason).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
    }

    /// <inheritdoc />
    public async ValueTask<ExpertPlacementTable> WaitForNewerAsync(ulong version, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            var table = Volatile.Read(ref _table);
            var left = deadline - DateTime.UtcNow;
            if ((table is not null && table.Version > version && Snapshot is { IsServing: true }) || left <= TimeSpan.Zero)
            {
                return GetServingTable();
            }
            await WaitForChangeOrRepollAsync(changed, left, cancellationToken).ConfigureAwait(false);
        }
    }

    private Task<UnreachableVerdict> Report(string workerId, ulong version, string reason)
    {
        foreach (var key in _reports.Keys.Where(k => k.Version + 16 < version))
        {
            _reports.TryRemove(key, out _);
        }
        var lazy = _reports.GetOrAdd((workerId, version), _ => new Lazy<Task<UnreachableVerdict>>(() => ReportCoreAsync(workerId, reason)));
        return lazy.Value;
    }

    private async Task<UnreachableVerdict> ReportCoreAsync(string workerId, string reason)
    {
        try
        {
            var verdict = await ReportWithRetryAsync(workerId, reason).ConfigureAwait(false);
            LogUnreachableVerdict(workerId, verdict);
            if (verdict == UnreachableVerdict.Alive)
            {
                // Only the outcome of a report in flight is shared; a later failure of a live worker asks again.
                foreach (var key in _reports.Keys.Where(k => k.Worker == workerId))
                {
                    _reports.TryRemove(key, out _);
                }
            }
            return verdict;
        }
        catch
        {
            // Let a later failure report again.
            foreach (var key in _reports.Keys.Where(k => k.Worker == workerId))
            {
                _reports.TryRemove(key, out _);
            }
            throw;
        }
    }

    // The client may have sent the report through the dead worker's own gateway: such a message is lost until the
    // client's response timeout, so each attempt waits briefly and the next goes out through a live gateway.
    private async Task<UnreachableVerdict> ReportWithRetryAsync(string workerId, string reason)
    {
        var deadline = DateTime.UtcNow + RecoveryTimeout;
        while (true)
        {
            try
            {
                return await Grain.ReportUnreachableAsync(workerId, reason).WaitAsync(ReportAttemptTimeout, _stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is TimeoutException or OrleansException && DateTime.UtcNow < deadline)
            {
                LogRetry($"reporting worker {workerId} unreachable: {ex.GetType().Name}");
            }
        }
    }

    /// <summary>Longest one attempt to report an unreachable worker may take before it is sent again. Default: 3 s.</summary>
    public TimeSpan ReportAttemptTimeout { get; set; } = TimeSpan.FromSeconds(3);

    /// <summary>Waits until a plan serves every expert (with at least <paramref name="minWorkers"/> workers in it).</summary>
    /// <exception cref="TimeoutException">Not serving within <paramref name="timeout"/>; the message gives the last snapshot.</exception>
    public async Task<ExpertPlacementTable> WaitForServingAsync(int minWorkers, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            var s = Snapshot;
            if (s is not null && s.IsServing && s.Plan.Workers.Length >= minWorkers)
            {
                return GetServingTable();
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
            {
                throw new TimeoutException(s is null
                    ? $"no placement plan within {timeout.TotalSeconds:F0} s"
                    : $"placement plan {s.Plan.Version} not serving within {timeout.TotalSeconds:F0} s: {s.Plan.Workers.Length} workers (want {minWorkers}), {s.ReadyWorkers.Length} ready, covers every expert: {s.Plan.CoversAllExperts}");
            }
            await Task.WhenAny(changed, Task.Delay(left, cancellationToken)).ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
        }
    }

    private async Task FollowAsync()
    {
        long generation = long.MinValue;
        bool askNow = true;
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                var repollSource = Volatile.Read(ref _repoll);
                var repoll = repollSource.Task;
                var call = askNow ? Grain.GetSnapshotAsync() : Grain.WaitForChangeAsync(generation, PollWait);
                var limit = askNow ? ReportAttemptTimeout : PollWait + PollGrace;
                Task first;
                using (var attempt = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
                {
                    first = await Task.WhenAny(call, repoll, Task.Delay(limit, attempt.Token)).ConfigureAwait(false);
                    attempt.Cancel();
                }
                _stop.Token.ThrowIfCancellationRequested();
                if (first != call)
                {
                    // Abandoned (its late answer or failure is dropped); ask for the snapshot at once, through whichever
                    // gateway the client picks now.
                    _ = call.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                    if (first == repoll)
                    {
                        Interlocked.CompareExchange(ref _repoll, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), repollSource);
                    }
                    else
                    {
                        LogRetryLimited($"placement poll unanswered after {limit.TotalSeconds:F0} s");
                    }
                    askNow = true;
                    continue;
                }
                var snapshot = await call.ConfigureAwait(false);
                askNow = false;
                _confirmedUtc = DateTime.UtcNow;
                if (snapshot.Generation != generation)
                {
                    generation = snapshot.Generation;
                    var table = Volatile.Read(ref _table);
                    if (snapshot.Plan.Version > 0 && (table is null || table.Version != (ulong)snapshot.Plan.Version))
                    {
                        Volatile.Write(ref _table, ExpertPlacementTable.FromPlan(snapshot.Plan));
                    }
                    Volatile.Write(ref _snapshot, snapshot);
                    if (snapshot.IsServing)
                    {
                        Volatile.Write(ref _hasServed, true);
                    }
                    LogSnapshot(snapshot.Plan.Version, snapshot.Plan.Workers.Length, snapshot.ReadyWorkers.Length, snapshot.IsServing);
                    Interlocked.Exchange(ref _changed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
                }
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                askNow = true;
                LogRetryLimited(ex.Message);
                try
                {
                    await Task.Delay(500, _stop.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
    }

    // While the cluster is unreachable the loop retries twice a second: one line per 10 s (with the count) keeps the
    // log readable and its volume bounded whatever the outage's length.
    private void LogRetryLimited(string reason)
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        if (System.Diagnostics.Stopwatch.GetElapsedTime(Interlocked.Read(ref _lastRetryLogTicks), now) < TimeSpan.FromSeconds(10))
        {
            Interlocked.Increment(ref _suppressedRetries);
            return;
        }
        Interlocked.Exchange(ref _lastRetryLogTicks, now);
        long suppressed = Interlocked.Exchange(ref _suppressedRetries, 0);
        LogRetry(suppressed == 0 ? reason.ReplaceLineEndings(" ") : $"{reason.ReplaceLineEndings(" ")} (and {suppressed} more failures in the last 10 s)");
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        // Bounded: a coordinator stopping (SIGTERM) must be gone within 10 s even when every gateway is dead.
        _stop.Cancel();
        try
        {
            await _loop.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
        }
        using var stopping = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try
        {
            await _client.StopAsync(stopping.Token).WaitAsync(TimeSpan.FromSeconds(3)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException or OrleansException)
        {
        }
        _client.Dispose();
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 3110, Level = LogLevel.Information,
        Message = "Placement plan {PlanVersion}: {Workers} workers, {Ready} ready, serving {Serving}")]
    private partial void LogSnapshot(long planVersion, int workers, int ready, bool serving);

    [LoggerMessage(EventId = 3112, Level = LogLevel.Warning, Message = "Reported worker {WorkerId} unreachable: placement authority says {Verdict}")]
    private partial void LogUnreachableVerdict(string workerId, UnreachableVerdict verdict);

    [LoggerMessage(EventId = 3111, Level = LogLevel.Warning, Message = "Placement follower: {Reason}; retrying")]
    private partial void LogRetry(string reason);

    [LoggerMessage(EventId = 3113, Level = LogLevel.Information, Message = "Connected to the expert cluster ({Where}); following its placement plan")]
    private partial void LogConnected(string where);

    [LoggerMessage(EventId = 3114, Level = LogLevel.Warning,
        Message = "Waiting for the expert cluster ({Where}): no gateway answered yet (attempt {Attempt}: {Error}); retrying")]
    private static partial void LogWaiting(ILogger logger, string where, int attempt, string error);
}
