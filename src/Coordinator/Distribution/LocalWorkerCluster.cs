using Distributed.Coordinator.Moe;
using Distributed.Checkpoint;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>What <see cref="LocalWorkerCluster.StartAsync(LocalClusterOptions, DistributionOptions, Action{string}, ILoggerFactory, CancellationToken)"/>
/// and <c>--local-workers N</c> start. Section <c>LocalCluster</c>.</summary>
public sealed class LocalClusterOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "LocalCluster";

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

    /// <summary>Extra environment variables for every worker.</summary>
    public IDictionary<string, string> Environment { get; } = new Dictionary<string, string>();

    /// <summary>
    /// How every worker loads its experts (<c>--quantize</c>, <c>--fp8-activations</c>); the coordinator's
    /// <see cref="DistributionOptions.ExpertLoad"/> must match. Default: as stored, weight-only.
    /// </summary>
    public ExpertLoadOptions Experts { get; set; } = ExpertLoadOptions.Default;

    /// <summary>Mutual TLS on the cluster's Orleans links with credentials made for this launch (a throw-away CA), so
    /// the silo and gateway ports accept only this cluster's processes. The data plane on loopback is not encrypted
    /// (it authenticates callers by the cluster token). Default: true.</summary>
    public bool ClusterTls { get; set; } = true;

    /// <summary>
    /// CUDA device ordinals of the workers, one GPU per worker (<c>--gpus 0,1,...</c>): worker i is started with
    /// <c>--gpu Gpus[i]</c>. At start the list must name exactly <see cref="Workers"/> distinct devices; workers added
    /// later (scale-up) cycle through it (<c>Gpus[i mod length]</c>), sharing a GPU with an earlier worker. Empty: no
    /// <c>--gpu</c>, every worker uses its default device (0). Default: empty.
    /// </summary>
    public int[] Gpus { get; set; } = [];

    /// <summary>The <c>--gpu</c> of worker <paramref name="index"/>, or null when <see cref="Gpus"/> is empty.</summary>
    public int? GpuOf(int index) => Gpus.Length == 0 ? null : Gpus[index % Gpus.Length];

    /// <summary>Every problem; each names its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (Workers is < 1 or > 64)
        {
            errors.Add($"LocalCluster:Workers {Workers} must be within [1, 64]");
        }
        if (Gpus.Length > 0)
        {
            if (Gpus.Length != Workers)
            {
                errors.Add($"LocalCluster:Gpus (--gpus) lists {Gpus.Length} device(s) for {Workers} worker(s): give one GPU per worker");
            }
            if (Gpus.Any(g => g is < 0 or > 1023))
            {
                errors.Add($"LocalCluster:Gpus (--gpus) {string.Join(",", Gpus)}: device ordinals must be within [0, 1023]");
            }
            if (Gpus.Distinct().Count() != Gpus.Length)
            {
                errors.Add($"LocalCluster:Gpus (--gpus) {string.Join(",", Gpus)} names a device twice: one GPU per worker");
            }
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
/// (<see cref="LocalWorkerLauncher"/>), joins their cluster as an Orleans client (<see cref="ClusterPlacementFollower"/>,
/// the same path a coordinator of independently started workers takes), waits until the placement plan covers every
/// expert with every worker serving, and exposes a ready <see cref="Dispatcher"/>. Unless
/// <see cref="LocalClusterOptions.ClusterTls"/> is off, the Orleans links use mutual TLS with throw-away credentials
/// made for this launch. <see cref="DisposeAsync"/> stops the client and every process it started.
/// </summary>
public sealed class LocalWorkerCluster : IAsyncDisposable
{
    private readonly LocalWorkerLauncher _launcher;
    private readonly ClusterPlacementFollower _follower;
    private readonly List<WorkerChannelPool> _pools = [];
    private readonly LocalClusterOptions _options;
    private readonly ModelDescriptor _model;
    private readonly Action<string> _log;
    private readonly ILoggerFactory _loggerFactory;
    private readonly LocalClusterCredentials? _credentials;
    private readonly string _clusterToken;

    private LocalWorkerCluster(LocalWorkerLauncher launcher, ClusterPlacementFollower follower, LocalClusterOptions options, ModelDescriptor model,
        DistributionOptions distribution, Action<string> log, ILoggerFactory loggerFactory, LocalClusterCredentials? credentials)
    {
        _launcher = launcher;
        _follower = follower;
        _options = options;
        _model = model;
        _log = log;
        _loggerFactory = loggerFactory;
        _credentials = credentials;
        _clusterToken = distribution.ClusterToken!;
        GrpcDispatcher = CreateDispatcher(distribution);
    }

    /// <summary>What an Orleans client (another coordinator) needs to join this cluster.</summary>
    public ExpertClusterOptions ClientOptions => _launcher.ClientOptions;

    /// <summary>The credentials a client of this cluster needs (its Orleans links are mutual TLS), or null without TLS.</summary>
    public ClusterCredentials? Credentials => _credentials?.Credentials;

    /// <summary>The TLS options of this cluster's links (throw-away credentials), or null without TLS.</summary>
    public ClusterTlsOptions? Tls => _credentials?.Options;

    /// <summary>The model the workers serve.</summary>
    public ModelDescriptor Model => _model;

    /// <summary>Another dispatcher over the same workers (e.g. another wire dtype); disposed with the cluster.</summary>
    public GrpcExpertDispatcher CreateDispatcher(DistributionOptions distribution)
    {
        ArgumentNullException.ThrowIfNull(distribution);
        // The workers require the cluster token they were started with.
        distribution.ClusterToken ??= _clusterToken;
        var errors = distribution.Validate();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        var pool = new WorkerChannelPool(_model, distribution, _loggerFactory.CreateLogger<WorkerChannelPool>(), _credentials?.Credentials);
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
        await StartWorkerAsync(_launcher.Workers.Count, cancellationToken).ConfigureAwait(false);
        var table = await _follower.WaitForServingAsync(_launcher.Workers.Count(w => !w.HasExited), _options.StartTimeout, cancellationToken).ConfigureAwait(false);
        _log($"placement plan {table.Version} serves every expert on {table.Workers.Count} workers");
    }

    /// <summary>
    /// Starts worker <paramref name="index"/> (a new one when it equals <see cref="Workers"/>' count, else a new process
    /// under the id of a worker that exited, e.g. after <see cref="KillWorker"/>) and waits for its ready line, not for
    /// a plan: joining workers are placed per the cluster's policy.
    /// </summary>
    public Task<WorkerProcess> StartWorkerAsync(int index, CancellationToken cancellationToken) => _launcher.StartWorkerAsync(index, cancellationToken);

    /// <summary>Kills worker <paramref name="index"/> with SIGKILL (no shutdown, no unregistration). Index 0 is the
    /// localhost-clustering primary, whose loss ends the cluster.</summary>
    public void KillWorker(int index) => _launcher.KillWorker(index);

    /// <summary>The dispatcher to hand to the engine.</summary>
    public IExpertDispatcher Dispatcher => GrpcDispatcher;

    /// <summary>The same dispatcher, with its statistics.</summary>
    public GrpcExpertDispatcher GrpcDispatcher { get; }

    /// <summary>The placement follower (the Orleans client).</summary>
    public ClusterPlacementFollower Placement => _follower;

    /// <summary>The worker processes.</summary>
    public IReadOnlyList<WorkerProcess> Workers => _launcher.Workers;

    /// <summary>Starts the cluster (localhost membership, private cluster id) and waits until it serves every expert. The
    /// workers get the cluster credential of <paramref name="distribution"/>, generated when it has none
    /// (<see cref="AddClusterToken"/>).</summary>
    /// <param name="log">Receives the workers' output lines and progress.</param>
    /// <exception cref="ArgumentException">Invalid options (every problem listed).</exception>
    /// <exception cref="TimeoutException">The workers or the plan were not ready within <see cref="LocalClusterOptions.StartTimeout"/>.</exception>
    public static Task<LocalWorkerCluster> StartAsync(LocalClusterOptions options, DistributionOptions distribution, Action<string> log,
        ILoggerFactory loggerFactory, CancellationToken cancellationToken)
        => StartAsync(options, new ExpertClusterOptions(), distribution, log, loggerFactory, cancellationToken);

    /// <summary>Starts the cluster on <paramref name="membership"/> (Localhost, Redis or ADO.NET) and waits until it serves every expert.</summary>
    /// <exception cref="ArgumentException">Invalid options (every problem listed).</exception>
    /// <exception cref="TimeoutException">The workers or the plan were not ready within <see cref="LocalClusterOptions.StartTimeout"/>.</exception>
    public static async Task<LocalWorkerCluster> StartAsync(LocalClusterOptions options, ExpertClusterOptions membership, DistributionOptions distribution,
        Action<string> log, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(membership);
        ArgumentNullException.ThrowIfNull(distribution);
        var errors = options.Validate().Concat(distribution.Validate()).ToList();
        if (distribution.ExpertLoad != options.Experts)
        {
            errors.Add($"Distribution:Quantize/Fp8Activations ({distribution.ExpertLoad}) do not match the workers' expert load options ({options.Experts})");
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
        var started = DateTime.UtcNow;
        var credentials = options.ClusterTls ? LocalClusterCredentials.Create() : null;
        LocalWorkerLauncher? launcher = null;
        ClusterPlacementFollower? follower = null;
        try
        {
            var environment = new Dictionary<string, string>(options.Environment);
            credentials?.AddTo(environment);
            AddClusterToken(environment, distribution);
            launcher = await LocalWorkerLauncher.StartAsync(options, membership, environment, log, cancellationToken).ConfigureAwait(false);
            var client = launcher.ClientOptions;
            client.ConnectTimeout = Remaining(options, started);
            follower = await ClusterPlacementFollower.StartAsync(client, loggerFactory, cancellationToken: cancellationToken, tls: credentials?.Credentials).ConfigureAwait(false);
            var table = await follower.WaitForServingAsync(options.Workers, Remaining(options, started), cancellationToken).ConfigureAwait(false);
            log($"placement plan {table.Version} serves every expert on {table.Workers.Count} workers");
            return new LocalWorkerCluster(launcher, follower, options, model, distribution, log, loggerFactory, credentials);
        }
        catch
        {
            if (follower is not null)
            {
                await follower.DisposeAsync().ConfigureAwait(false);
            }
            if (launcher is not null)
            {
                await launcher.DisposeAsync().ConfigureAwait(false);
            }
            credentials?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Gives the workers this launcher starts the cluster credential: the token of <paramref name="distribution"/>
    /// (<c>DISTRIBUTED_CLUSTER_TOKEN</c>) or, when it has none, a freshly generated one (32 random bytes), which is then
    /// set on <paramref name="distribution"/> so the coordinator's calls carry it.
    /// </summary>
    internal static void AddClusterToken(IDictionary<string, string> environment, DistributionOptions distribution)
    {
        distribution.ClusterToken ??= ClusterToken.Generate();
        environment[ClusterToken.EnvironmentVariable] = distribution.ClusterToken;
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
        await _launcher.DisposeAsync().ConfigureAwait(false);
        _credentials?.Dispose();
    }
}
