using System.Globalization;
using Distributed.Checkpoint;
using Distributed.Hosting;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Starts and stops the expert-worker processes of <c>--local-workers N</c> on this machine and nothing else: they join
/// the cluster described by <see cref="ClientOptions"/> exactly as independently started workers would, and the
/// coordinator then follows that cluster like any other (<see cref="ClusterPlacementFollower"/>). With localhost
/// clustering, worker 0 is the primary silo and the cluster id is private to this launch; with Redis or ADO.NET
/// membership the workers join the configured store and cluster id. Every worker gets the same environment (the
/// cluster token and the TLS credentials). A worker that exits is logged at once with its exit code or signal.
/// Disposing stops every worker: SIGTERM, then SIGKILL after <see cref="StopGrace"/>.
/// </summary>
public sealed class LocalWorkerLauncher : IAsyncDisposable
{
    /// <summary>How long stopped workers get to leave the cluster before they are killed.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(3);

    private readonly List<WorkerProcess> _workers = [];
    private readonly LocalClusterOptions _options;
    private readonly ExpertClusterOptions _cluster;
    private readonly IReadOnlyDictionary<string, string> _environment;
    private readonly string _workerPath;
    private readonly Action<string> _log;
    private int _primarySiloPort;
    private int _stopping;

    private LocalWorkerLauncher(LocalClusterOptions options, ExpertClusterOptions cluster, IReadOnlyDictionary<string, string> environment, string workerPath,
        Action<string> log)
    {
        _options = options;
        _cluster = cluster;
        _environment = environment;
        _workerPath = workerPath;
        _log = log;
    }

    /// <summary>The worker processes, by index (a restarted worker replaces its predecessor).</summary>
    public IReadOnlyList<WorkerProcess> Workers => _workers;

    /// <summary>What a client (this coordinator, or another one) needs to join the cluster the workers formed.</summary>
    public ExpertClusterOptions ClientOptions { get; private set; } = new();

    /// <summary>
    /// Starts <see cref="LocalClusterOptions.Workers"/> workers joined to <paramref name="cluster"/> and waits for each
    /// one's ready line (not for a plan).
    /// </summary>
    /// <param name="options">How many, which model, threads, start timeout, extra worker settings.</param>
    /// <param name="cluster">Membership to join. Localhost: the workers form a private cluster (id
    /// <see cref="LocalClusterOptions.ClusterId"/>). Redis / ADO.NET: this store, service and cluster id.</param>
    /// <param name="environment">Extra environment variables for every worker (credentials).</param>
    /// <param name="log">Receives the workers' output lines and the launcher's progress.</param>
    /// <param name="cancellationToken">Cancels the start (workers already started are killed).</param>
    /// <exception cref="ArgumentException">Invalid options (every problem listed).</exception>
    /// <exception cref="TimeoutException">A worker was not ready within <see cref="LocalClusterOptions.StartTimeout"/>.</exception>
    /// <exception cref="InvalidOperationException">A worker exited before it was ready (its last error lines are in the message).</exception>
    public static async Task<LocalWorkerLauncher> StartAsync(LocalClusterOptions options, ExpertClusterOptions cluster, IReadOnlyDictionary<string, string> environment,
        Action<string> log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(cluster);
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(log);
        var errors = options.Validate();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        var launcher = new LocalWorkerLauncher(options, cluster, environment, options.WorkerPath ?? WorkerProcess.LocateWorker(), log);
        var started = DateTime.UtcNow;
        try
        {
            var gatewayPorts = new int[options.Workers];
            for (int i = 0; i < options.Workers; i++)
            {
                // The localhost primary must be up before the others join it; store-based workers start together.
                var worker = await launcher.StartProcessAsync(i, Remaining(options, started), waitReady: i == 0 || cluster.Clustering != ClusteringMode.Localhost,
                    cancellationToken).ConfigureAwait(false);
                gatewayPorts[i] = worker.GatewayPort;
            }
            for (int i = 0; i < launcher._workers.Count; i++)
            {
                if (launcher._workers[i].GrpcAddress is null)
                {
                    var worker = await launcher.WaitReadyOrRestartAsync(i, Remaining(options, started), cancellationToken).ConfigureAwait(false);
                    gatewayPorts[i] = worker.GatewayPort;
                }
            }
            launcher.ClientOptions = launcher.ClientOptionsFor(gatewayPorts);
            return launcher;
        }
        catch
        {
            await launcher.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private ExpertClusterOptions ClientOptionsFor(int[] gatewayPorts) => new()
    {
        Clustering = _cluster.Clustering,
        ServiceId = _cluster.ServiceId,
        ClusterId = _cluster.Clustering == ClusteringMode.Localhost ? _options.ClusterId : _cluster.ClusterId,
        GatewayPorts = gatewayPorts,
        RedisConnectionString = _cluster.RedisConnectionString,
        AdoNetInvariant = _cluster.AdoNetInvariant,
        AdoNetConnectionString = _cluster.AdoNetConnectionString,
        ConnectTimeout = _cluster.ConnectTimeout,
    };

    /// <summary>
    /// Starts worker <paramref name="index"/> (a new one when it equals <see cref="Workers"/>' count, else a new process
    /// under the id of a worker that exited) and waits for its ready line, not for a plan: joining workers are placed
    /// per the cluster's policy.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a new worker or a worker that exited.</exception>
    public async Task<WorkerProcess> StartWorkerAsync(int index, CancellationToken cancellationToken)
    {
        if (index < 0 || index > _workers.Count || (index < _workers.Count && !_workers[index].HasExited))
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, "not a new worker or a worker that exited");
        }
        return await StartProcessAsync(index, _options.StartTimeout, waitReady: true, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Kills worker <paramref name="index"/> with SIGKILL (no shutdown, no unregistration). With localhost
    /// clustering index 0 is the primary silo, whose loss ends the cluster.</summary>
    public void KillWorker(int index) => _workers[index].Kill();

    private async Task<WorkerProcess> StartProcessAsync(int index, TimeSpan timeout, bool waitReady, CancellationToken cancellationToken)
    {
        int[] ports = WorkerProcess.FreePorts(2);
        if (index == 0 && _cluster.Clustering == ClusteringMode.Localhost)
        {
            // Worker 0 is the localhost primary (restarted or not); the others join it.
            _primarySiloPort = ports[0];
        }
        if (_options.GpuOf(index) is int gpu)
        {
            _log($"starting worker-{index} on GPU {gpu} (--gpu {gpu})");
        }
        var worker = WorkerProcess.Start(_workerPath, Arguments(index, ports[0], ports[1]), $"worker-{index}", _log, _environment);
        worker.GatewayPort = ports[1];
        worker.Exited += OnExited;
        if (index == _workers.Count)
        {
            _workers.Add(worker);
        }
        else
        {
            var old = _workers[index];
            _workers[index] = worker;
            await old.DisposeAsync().ConfigureAwait(false);
        }
        return waitReady ? await WaitReadyOrRestartAsync(index, timeout, cancellationToken).ConfigureAwait(false) : worker;
    }

    // A worker that dies before its ready line (typically a silo/gateway port taken between FreePorts and the bind: the
    // ports are probed, released, then bound by another process) is restarted on fresh ports, twice at most.
    private async Task<WorkerProcess> WaitReadyOrRestartAsync(int index, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        for (int attempt = 0; ; attempt++)
        {
            var worker = _workers[index];
            try
            {
                string address = await worker.WaitReadyAsync(Left(deadline), cancellationToken).ConfigureAwait(false);
                _log($"{worker.Name} ready at {address} (pid {worker.ProcessId})");
                return worker;
            }
            catch (InvalidOperationException) when (worker.HasExited && attempt < 2 && !cancellationToken.IsCancellationRequested)
            {
                _log($"{worker.Name} exited before it was ready; restarting it on fresh ports");
                await StartProcessAsync(index, Left(deadline), waitReady: false, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private static TimeSpan Left(DateTime deadline) => deadline > DateTime.UtcNow ? deadline - DateTime.UtcNow : TimeSpan.Zero;

    private void OnExited(WorkerProcess worker)
    {
        if (Volatile.Read(ref _stopping) == 0 && !worker.Disposed)
        {
            // Said at once, whatever the cause, so an operator sees a crash in serve's own log.
            _log($"{worker.Name} (pid {worker.ProcessId}) exited: {worker.DescribeExit()}");
        }
    }

    private List<string> Arguments(int index, int siloPort, int gatewayPort) => Arguments(_options, _cluster, index, siloPort, gatewayPort, _primarySiloPort);

    /// <summary>The command line of worker <paramref name="index"/> (its model, id, threads, cluster, ports, <c>--gpu</c>, expert format and extra settings).</summary>
    internal static List<string> Arguments(LocalClusterOptions options, ExpertClusterOptions cluster, int index, int siloPort, int gatewayPort, int primarySiloPort)
    {
        var args = new List<string>
        {
            "--model", options.ModelDirectory,
            "--worker-id", $"worker-{index}",
            "--threads", options.KernelThreadsPerWorker.ToString(CultureInfo.InvariantCulture),
            "--service-id", cluster.ServiceId,
            "--silo-port", siloPort.ToString(CultureInfo.InvariantCulture),
            "--gateway-port", gatewayPort.ToString(CultureInfo.InvariantCulture),
        };
        if (cluster.Clustering == ClusteringMode.Localhost)
        {
            args.AddRange(["--cluster-id", options.ClusterId,
                "--primary-silo-port", (index == 0 ? 0 : primarySiloPort).ToString(CultureInfo.InvariantCulture)]);
        }
        else
        {
            args.AddRange(["--clustering", cluster.Clustering.ToString(), "--cluster-id", cluster.ClusterId, "--advertised-address", "127.0.0.1"]);
            if (cluster.Clustering == ClusteringMode.Redis)
            {
                args.AddRange(["--redis", cluster.RedisConnectionString!]);
            }
            else
            {
                args.AddRange(["--Cluster:AdoNetInvariant", cluster.AdoNetInvariant, "--Cluster:AdoNetConnectionString", cluster.AdoNetConnectionString!]);
            }
        }
        if (cluster.ProbeTimeout is { } probe)
        {
            args.AddRange(["--probe-timeout", probe.ToString("c", CultureInfo.InvariantCulture)]);
        }
        if (options.GpuOf(index) is int gpu)
        {
            args.AddRange(["--gpu", gpu.ToString(CultureInfo.InvariantCulture)]);
        }
        if (options.Experts.Quantize != ExpertQuantization.None)
        {
            args.AddRange(["--quantize", options.Experts.Quantize.ToString().ToLowerInvariant()]);
        }
        if (options.Experts.Activations == Kernels.Fp8ActivationMode.PerTokenFp8)
        {
            args.AddRange(["--fp8-activations", "true"]);
        }
        foreach (var (k, v) in options.WorkerSettings)
        {
            args.Add("--" + k);
            args.Add(v);
        }
        return args;
    }

    private static TimeSpan Remaining(LocalClusterOptions options, DateTime started)
    {
        var left = options.StartTimeout - (DateTime.UtcNow - started);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _stopping, 1) != 0)
        {
            return;
        }
        foreach (var w in _workers.Where(w => !w.HasExited))
        {
            try
            {
                w.Terminate();
            }
            catch (Exception ex) when (ex is InvalidOperationException or PlatformNotSupportedException or System.ComponentModel.Win32Exception)
            {
            }
        }
        using var grace = new CancellationTokenSource(StopGrace);
        try
        {
            await Task.WhenAll(_workers.Select(w => w.WaitForExitAsync(grace.Token))).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Whoever did not leave in time is killed below.
        }
        await Task.WhenAll(_workers.Select(w => w.DisposeAsync().AsTask())).ConfigureAwait(false);
    }
}
