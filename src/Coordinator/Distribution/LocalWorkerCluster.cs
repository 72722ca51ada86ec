using System.Globalization;
using Distributed.Coordinator.Moe;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>What <see cref="LocalWorkerCluster.StartAsync"/> starts.</summary>
public sealed class LocalClusterOptions
{
    /// <summary>Worker processes. Default: 2.</summary>
    public int Workers { get; set; } = 2;

    /// <summary>Model directory every worker opens. Required.</summary>
    public string ModelDirectory { get; set; } = "";

    /// <summary>ExpertWorker executable (<c>.dll</c> or apphost); default: <see cref="WorkerProcess.LocateWorker"/>.</summary>
    public string? WorkerPath { get; set; }

    /// <summary>CPU kernel threads per worker. Default: 1 (N workers share this machine's cores).</summary>
    public int KernelThreadsPerWorker { get; set; } = 1;

    /// <summary>Longest wait for the workers and a serving plan. Default: 120 s.</summary>
    public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>Orleans cluster id (unique per launch so parallel clusters never meet). Default: <c>local-{guid}</c>.</summary>
    public string ClusterId { get; set; } = $"local-{Guid.NewGuid():N}";

    /// <summary>Extra <c>--Key value</c> settings for every worker (e.g. <c>Placement:SettleDelay</c>).</summary>
    public IDictionary<string, string> WorkerSettings { get; } = new Dictionary<string, string>();

    /// <summary>
    /// How every worker loads its experts (<c>--quantize</c>, <c>--fp8-activations</c>); the coordinator's
    /// <see cref="DistributionOptions.ExpertActivations"/> must match. Default: as stored, weight-only.
    /// </summary>
    public ExpertLoadOptions Experts { get; set; } = ExpertLoadOptions.Default;

    /// <summary>Every problem; each names its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (Workers is < 1 or > 64)
        {
            errors.Add($"LocalCluster:Workers {Workers} must be within [1, 64]");
        }
        if (string.IsNullOrWhiteSpace(ModelDirectory))
        {
            errors.Add("LocalCluster:ModelDirectory is required");
        }
        if (KernelThreadsPerWorker is < 0 or > 1024)
        {
            errors.Add($"LocalCluster:KernelThreadsPerWorker {KernelThreadsPerWorker} must be within [0, 1024]");
        }
        if (StartTimeout <= TimeSpan.Zero)
        {
            errors.Add($"LocalCluster:StartTimeout {StartTimeout} must be positive");
        }
        return errors;
    }
}

/// <summary>
/// N expert workers on loopback plus the coordinator-side pieces to use them, in one call: starts the worker processes
/// (the first is the localhost-clustering primary), joins the cluster as an Orleans client, waits until the placement
/// plan covers every expert with every worker serving, and exposes a ready <see cref="Dispatcher"/>.
/// <see cref="DisposeAsync"/> stops the client and kills every process it started.
/// </summary>
public sealed class LocalWorkerCluster : IAsyncDisposable
{
    private readonly List<WorkerProcess> _workers;
    private readonly ClusterPlacementFollower _follower;
    private readonly List<WorkerChannelPool> _pools = [];
    private readonly LocalClusterOptions _options;
    private readonly ModelDescriptor _model;
    private readonly string _workerPath;
    private readonly int _primarySiloPort;
    private readonly Action<string> _log;
    private readonly ILoggerFactory _loggerFactory;

    private LocalWorkerCluster(List<WorkerProcess> workers, ClusterPlacementFollower follower, LocalClusterOptions options, ModelDescriptor model,
        string workerPath, int primarySiloPort, DistributionOptions distribution, Action<string> log, ILoggerFactory loggerFactory)
    {
        _workers = workers;
        _follower = follower;
        _options = options;
        _model = model;
        _workerPath = workerPath;
        _primarySiloPort = primarySiloPort;
        _log = log;
        _loggerFactory = loggerFactory;
        GrpcDispatcher = CreateDispatcher(distribution);
    }

    /// <summary>What an Orleans client (another coordinator) needs to join this cluster (the initial workers' gateways).</summary>
    public ExpertClusterOptions ClientOptions { get; private init; } = new();

    /// <summary>The model the workers serve.</summary>
    public ModelDescriptor Model => _model;

    /// <summary>Another dispatcher over the same workers (e.g. another wire dtype); disposed with the cluster.</summary>
    public GrpcExpertDispatcher CreateDispatcher(DistributionOptions distribution)
    {
        var errors = distribution.Validate();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        var pool = new WorkerChannelPool(_model, distribution, _loggerFactory.CreateLogger<WorkerChannelPool>());
        lock (_pools)
        {
            _pools.Add(pool);
        }
        _follower.RecoveryTimeout = distribution.RecoveryTimeout;
        return new GrpcExpertDispatcher(_follower, pool, _loggerFactory.CreateLogger<GrpcExpertDispatcher>());
    }

    /// <summary>Starts one more worker and waits until a plan including it serves every expert.</summary>
    public async Task AddWorkerAsync(CancellationToken cancellationToken)
    {
        await StartWorkerAsync(_workers.Count, cancellationToken).ConfigureAwait(false);
        var table = await _follower.WaitForServingAsync(_workers.Count(w => !w.HasExited), _options.StartTimeout, cancellationToken).ConfigureAwait(false);
        _log($"placement plan {table.Version} serves every expert on {table.Workers.Count} workers");
    }

    /// <summary>
    /// Starts worker <paramref name="index"/> (a new one when it equals <see cref="Workers"/>' count, else a new process
    /// under the id of a worker that exited, e.g. after <see cref="KillWorker"/>) and waits for its ready line, not for
    /// a plan: joining workers are placed per the cluster's policy.
    /// </summary>
    public async Task<WorkerProcess> StartWorkerAsync(int index, CancellationToken cancellationToken)
    {
        if (index < 0 || index > _workers.Count || (index < _workers.Count && !_workers[index].HasExited))
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, "not a new worker or a worker that exited");
        }
        int[] ports = WorkerProcess.FreePorts(2);
        var worker = WorkerProcess.Start(_workerPath, WorkerArguments(_options, index, ports[0], ports[1], _primarySiloPort), $"worker-{index}", _log);
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
        _log($"{worker.Name} ready at {await worker.WaitReadyAsync(_options.StartTimeout, cancellationToken).ConfigureAwait(false)}");
        return worker;
    }

    /// <summary>Kills worker <paramref name="index"/> with SIGKILL (no shutdown, no unregistration). Index 0 is the
    /// localhost-clustering primary, whose loss ends the cluster.</summary>
    public void KillWorker(int index) => _workers[index].Kill();

    private static List<string> WorkerArguments(LocalClusterOptions options, int index, int siloPort, int gatewayPort, int primarySiloPort)
    {
        var args = new List<string>
        {
            "--model", options.ModelDirectory,
            "--worker-id", $"worker-{index}",
            "--threads", options.KernelThreadsPerWorker.ToString(CultureInfo.InvariantCulture),
            "--cluster-id", options.ClusterId,
            "--silo-port", siloPort.ToString(CultureInfo.InvariantCulture),
            "--gateway-port", gatewayPort.ToString(CultureInfo.InvariantCulture),
            "--primary-silo-port", primarySiloPort.ToString(CultureInfo.InvariantCulture),
        };
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

    /// <summary>The dispatcher to hand to the engine.</summary>
    public IExpertDispatcher Dispatcher => GrpcDispatcher;

    /// <summary>The same dispatcher, with its statistics.</summary>
    public GrpcExpertDispatcher GrpcDispatcher { get; }

    /// <summary>The placement follower (the Orleans client).</summary>
    public ClusterPlacementFollower Placement => _follower;

    /// <summary>The worker processes.</summary>
    public IReadOnlyList<WorkerProcess> Workers => _workers;

    /// <summary>Starts the cluster and waits until it serves every expert.</summary>
    /// <param name="log">Receives the workers' output lines and progress.</param>
    /// <exception cref="ArgumentException">Invalid options (every problem listed).</exception>
    /// <exception cref="TimeoutException">The workers or the plan were not ready within <see cref="LocalClusterOptions.StartTimeout"/>.</exception>
    public static async Task<LocalWorkerCluster> StartAsync(LocalClusterOptions options, DistributionOptions distribution, Action<string> log,
        ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(distribution);
        var errors = options.Validate().Concat(distribution.Validate()).ToList();
        if (distribution.ExpertActivations != options.Experts.ActivationsTag)
        {
            errors.Add($"Distribution:ExpertActivations '{distribution.ExpertActivations}' does not match the workers' {options.Experts.ActivationsTag} experts");
        }
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(options.ModelDirectory))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint, options.Experts);
        }
        string workerPath = options.WorkerPath ?? WorkerProcess.LocateWorker();
        int[] ports = WorkerProcess.FreePorts(2 * options.Workers);
        var workers = new List<WorkerProcess>();
        ClusterPlacementFollower? follower = null;
        var started = DateTime.UtcNow;

        // A worker that dies before its ready line (typically a silo/gateway port taken between FreePorts and the bind:
        // the ports are probed, released, then bound by another process) is restarted on fresh ports, twice at most.
        async Task<WorkerProcess> ReadyOrRestartAsync(WorkerProcess worker, int index, int primarySiloPort)
        {
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    log($"{worker.Name} ready at {await worker.WaitReadyAsync(Remaining(options, started), cancellationToken).ConfigureAwait(false)}");
                    return worker;
                }
                catch (InvalidOperationException) when (worker.HasExited && attempt < 2 && !cancellationToken.IsCancellationRequested)
                {
                    await worker.DisposeAsync().ConfigureAwait(false);
                    int[] fresh = WorkerProcess.FreePorts(2);
                    ports[2 * index] = fresh[0];
                    ports[2 * index + 1] = fresh[1];
                    log($"{worker.Name} exited before it was ready; restarting it on ports {fresh[0]}/{fresh[1]}");
                    worker = WorkerProcess.Start(workerPath, WorkerArguments(options, index, fresh[0], fresh[1], index == 0 ? 0 : primarySiloPort), worker.Name, log);
                    workers[index] = worker;
                }
            }
        }

        try
        {
            for (int i = 0; i < options.Workers; i++)
            {
                var args = WorkerArguments(options, i, ports[2 * i], ports[2 * i + 1], i == 0 ? 0 : ports[0]);
                workers.Add(WorkerProcess.Start(workerPath, args, $"worker-{i}", log));
                if (i == 0)
                {
                    // The primary must be up before the others join it.
                    workers[0] = await ReadyOrRestartAsync(workers[0], 0, 0).ConfigureAwait(false);
                }
            }
            for (int i = 0; i < workers.Count; i++)
            {
                workers[i] = await ReadyOrRestartAsync(workers[i], i, ports[0]).ConfigureAwait(false);
            }
            var cluster = new ExpertClusterOptions
            {
                ClusterId = options.ClusterId,
                GatewayPorts = [.. Enumerable.Range(0, options.Workers).Select(i => ports[2 * i + 1])],
                ConnectTimeout = Remaining(options, started),
            };
            follower = await ClusterPlacementFollower.StartAsync(cluster, loggerFactory, cancellationToken: cancellationToken).ConfigureAwait(false);
            var table = await follower.WaitForServingAsync(options.Workers, Remaining(options, started), cancellationToken).ConfigureAwait(false);
            log($"placement plan {table.Version} serves every expert on {table.Workers.Count} workers");
            return new LocalWorkerCluster(workers, follower, options, model, workerPath, ports[0], distribution, log, loggerFactory) { ClientOptions = cluster };
        }
        catch
        {
            if (follower is not null)
            {
                await follower.DisposeAsync().ConfigureAwait(false);
            }
            foreach (var w in workers)
            {
                await w.DisposeAsync().ConfigureAwait(false);
            }
            throw;
        }
    }

    private static TimeSpan Remaining(LocalClusterOptions options, DateTime started)
    {
        var left = options.StartTimeout - (DateTime.UtcNow - started);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var pool in _pools)
        {
            await pool.DisposeAsync().ConfigureAwait(false);
        }
        await _follower.DisposeAsync().ConfigureAwait(false);
        await Task.WhenAll(_workers.Select(w => w.DisposeAsync().AsTask())).ConfigureAwait(false);
    }
}
