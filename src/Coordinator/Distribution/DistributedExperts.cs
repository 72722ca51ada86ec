using Distributed.Checkpoint;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;

namespace Distributed.Coordinator.Distribution;

/// <summary>Where a coordinator's routed experts run when they are not in-process.</summary>
public enum ExpertsMode
{
    /// <summary>
    /// On the workers of an expert cluster: the coordinator is an Orleans client of the cluster's membership (Localhost,
    /// Redis or ADO.NET) and follows the placement plan; workers join and leave at any time; the admin API works.
    /// <c>--local-workers N</c> starts N workers on this machine first and then takes this same path.
    /// </summary>
    Cluster = 0,

    /// <summary>
    /// On a fixed list of workers that serve static shards (<c>--workers host:port,...</c>): placement comes from their
    /// handshakes and never changes; a lost worker's experts fail unless another listed worker holds them; no admin API.
    /// </summary>
    FixedWorkers = 1,
}

/// <summary>What <see cref="DistributedExperts.StartAsync"/> needs: the membership, credentials and data-plane settings.</summary>
/// <param name="Mode">Cluster or fixed workers.</param>
/// <param name="Cluster">Membership of the cluster to join (Cluster mode).</param>
/// <param name="Tls">The cluster's TLS credentials (operator's); with local workers and none configured, throw-away ones are made.</param>
/// <param name="Distribution">Data-plane settings.</param>
/// <param name="LocalWorkers">Workers to start on this machine first (Cluster mode), or null.</param>
/// <param name="FixedWorkers">Comma-separated worker addresses (FixedWorkers mode).</param>
/// <param name="WorkerEnvironment">Extra environment variables for local workers (credentials).</param>
public sealed record ExpertsSettings(
    ExpertsMode Mode,
    ExpertClusterOptions Cluster,
    ClusterTlsOptions Tls,
    DistributionOptions Distribution,
    LocalClusterOptions? LocalWorkers = null,
    string? FixedWorkers = null,
    IReadOnlyDictionary<string, string>? WorkerEnvironment = null);

/// <summary>
/// The routed experts of a coordinator when they live in worker processes (<see cref="ExpertsMode"/>), with the
/// dispatcher for the engine. Dispose stops everything it started, within a bounded time.
/// </summary>
public sealed class DistributedExperts : IAsyncDisposable
{
    private readonly WorkerChannelPool _pool;
    private readonly ILoggerFactory _loggerFactory;
    private readonly bool _ownsLoggerFactory;
    private readonly IDisposable? _credentials;

    private DistributedExperts(ExpertsMode mode, GrpcExpertDispatcher dispatcher, WorkerChannelPool pool, ClusterPlacementFollower? follower,
        LocalWorkerLauncher? launcher, IDisposable? credentials, ILoggerFactory loggerFactory, bool ownsLoggerFactory, string description)
    {
        Mode = mode;
        Dispatcher = dispatcher;
        _pool = pool;
        Follower = follower;
        Launcher = launcher;
        _credentials = credentials;
        _loggerFactory = loggerFactory;
        _ownsLoggerFactory = ownsLoggerFactory;
        Description = description;
    }

    /// <summary>Cluster or fixed workers.</summary>
    public ExpertsMode Mode { get; }

    /// <summary>The dispatcher for the engine.</summary>
    public GrpcExpertDispatcher Dispatcher { get; }

    /// <summary>The placement follower (the Orleans client) in cluster mode; null for fixed workers.</summary>
    public ClusterPlacementFollower? Follower { get; }

    /// <summary>The workers started on this machine (<c>--local-workers</c>), or null.</summary>
    public LocalWorkerLauncher? Launcher { get; }

    /// <summary>One line for the start-up log: where the experts run.</summary>
    public string Description { get; }

    /// <summary>Null while every expert has a serving worker; otherwise why not (readiness).</summary>
    public string? NotReadyReason()
    {
        if (Follower is not null)
        {
            return Follower.NotReadyReason();
        }
        try
        {
            Dispatcher.Placement.GetServingTable();
            return null;
        }
        catch (ExpertDispatchException ex)
        {
            return ex.Message;
        }
    }

    /// <summary>
    /// Starts the experts' side: in cluster mode, optionally N local workers, then the Orleans client that follows the
    /// plan (connecting in the background: a cluster without workers yet is not an error) and the dispatcher; with local
    /// workers it waits until their plan serves every expert. In fixed mode, handshakes with every listed worker.
    /// </summary>
    /// <param name="settings">Mode, membership, credentials, data-plane settings.</param>
    /// <param name="modelDirectory">The checkpoint the workers must serve (its fingerprint is checked in every handshake).</param>
    /// <param name="log">Progress lines and the local workers' output.</param>
    /// <param name="loggerFactory">Log sink of the client and the dispatcher; null = warnings and above to <paramref name="log"/>.</param>
    /// <param name="cancellationToken">Cancels the start; whatever started is stopped.</param>
    /// <exception cref="ArgumentException">Invalid settings (every problem listed).</exception>
    /// <exception cref="InvalidOperationException">Unusable TLS files, or a local worker exited before it was ready.</exception>
    /// <exception cref="TimeoutException">Local workers or their plan were not ready in time.</exception>
    /// <exception cref="ExpertDispatchException">A fixed worker refused the handshake, belongs to a cluster, or the shards do not cover the model.</exception>
    public static async Task<DistributedExperts> StartAsync(ExpertsSettings settings, string modelDirectory, Action<string> log,
        ILoggerFactory? loggerFactory, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(log);
        var errors = settings.Distribution.Validate().Concat(settings.Tls.Validate()).ToList();
        if (settings.Mode == ExpertsMode.Cluster)
        {
            errors.AddRange(settings.Cluster.Validate(isSilo: false).Where(e => settings.LocalWorkers is null || !e.StartsWith("Cluster:GatewayPorts", StringComparison.Ordinal)));
            if (settings.LocalWorkers is { } local)
            {
                errors.AddRange(local.Validate());
            }
        }
        // The model fingerprint and the activation rule every worker must report follow from how experts are loaded.
        var experts = settings.Distribution.ExpertLoad;
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors));
        }
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(modelDirectory))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint, experts);
        }
        bool ownsFactory = loggerFactory is null;
        loggerFactory ??= CreateLoggerFactory(log);
        ClusterCredentials? operatorCredentials = null;
        LocalClusterCredentials? localCredentials = null;
        LocalWorkerLauncher? launcher = null;
        ClusterPlacementFollower? follower = null;
        WorkerChannelPool? pool = null;
        try
        {
            operatorCredentials = ClusterCredentials.Load(settings.Tls);
            if (settings.Mode == ExpertsMode.FixedWorkers)
            {
                return await ConnectFixedAsync(settings, model, operatorCredentials, log, loggerFactory, ownsFactory, cancellationToken).ConfigureAwait(false);
            }
            var credentials = operatorCredentials;
            var clientOptions = settings.Cluster;
            string description;
            if (settings.LocalWorkers is { } local)
            {
                var environment = new Dictionary<string, string>(settings.WorkerEnvironment ?? new Dictionary<string, string>());
                foreach (var (k, v) in local.Environment)
                {
                    environment[k] = v;
                }
                if (operatorCredentials is null && local.ClusterTls)
                {
                    localCredentials = LocalClusterCredentials.Create();
                    localCredentials.AddTo(environment);
                    credentials = localCredentials.Credentials;
                }
                else if (operatorCredentials is not null)
                {
                    AddOperatorTls(environment, settings.Tls);
                }
                launcher = await LocalWorkerLauncher.StartAsync(local, settings.Cluster, environment, log, cancellationToken).ConfigureAwait(false);
                clientOptions = launcher.ClientOptions;
                description = $"on {local.Workers} local workers ({clientOptions.Clustering} membership{(credentials is null ? "" : ", TLS cluster links")})";
            }
            else
            {
                description = $"on the expert cluster '{clientOptions.ClusterId}' ({clientOptions.Clustering} membership{(credentials is null ? "" : ", TLS")})";
            }
            follower = ClusterPlacementFollower.Create(clientOptions, credentials, loggerFactory);
            follower.RecoveryTimeout = settings.Distribution.RecoveryTimeout;
            pool = new WorkerChannelPool(model, settings.Distribution, loggerFactory.CreateLogger<WorkerChannelPool>(), credentials);
            var dispatcher = new GrpcExpertDispatcher(follower, pool, loggerFactory.CreateLogger<GrpcExpertDispatcher>());
            if (settings.LocalWorkers is { } started)
            {
                // The convenience mode waits for its own workers, so "listening on" means ready.
                await follower.WaitConnectedAsync(started.StartTimeout, cancellationToken).ConfigureAwait(false);
                var table = await follower.WaitForServingAsync(started.Workers, started.StartTimeout, cancellationToken).ConfigureAwait(false);
                log($"placement plan {table.Version} serves every expert on {table.Workers.Count} workers");
            }
            IDisposable? owned = localCredentials is not null ? localCredentials : operatorCredentials;
            return new DistributedExperts(ExpertsMode.Cluster, dispatcher, pool, follower, launcher, owned, loggerFactory, ownsFactory, description);
        }
        catch
        {
            if (pool is not null)
            {
                await pool.DisposeAsync().ConfigureAwait(false);
            }
            if (follower is not null)
            {
                await follower.DisposeAsync().ConfigureAwait(false);
            }
            if (launcher is not null)
            {
                await launcher.DisposeAsync().ConfigureAwait(false);
            }
            localCredentials?.Dispose();
            operatorCredentials?.Dispose();
            if (ownsFactory)
            {
                loggerFactory.Dispose();
            }
            throw;
        }
    }

    // Local workers of a coordinator that has the operator's certificates use the same ones.
    private static void AddOperatorTls(Dictionary<string, string> environment, ClusterTlsOptions tls)
    {
        environment["DISTRIBUTED_Tls__CertificatePath"] = Path.GetFullPath(tls.CertificatePath!);
        if (!string.IsNullOrWhiteSpace(tls.KeyPath))
        {
            environment["DISTRIBUTED_Tls__KeyPath"] = Path.GetFullPath(tls.KeyPath);
        }
        environment["DISTRIBUTED_Tls__CaPath"] = Path.GetFullPath(tls.CaPath!);
        environment["DISTRIBUTED_Tls__DataPlane"] = tls.DataPlane ? "true" : "false";
    }

    private static async Task<DistributedExperts> ConnectFixedAsync(ExpertsSettings settings, ModelDescriptor model, ClusterCredentials? credentials,
        Action<string> log, ILoggerFactory loggerFactory, bool ownsFactory, CancellationToken cancellationToken)
    {
        var endpoints = ParseWorkers(settings.FixedWorkers ?? "");
        var pool = new WorkerChannelPool(model, settings.Distribution, loggerFactory.CreateLogger<WorkerChannelPool>(), credentials);
        try
        {
            var hellos = new List<(WorkerEndpoint, HelloReply)>();
            foreach (var endpoint in endpoints)
            {
                var connection = await pool.GetAsync(endpoint, cancellationToken).ConfigureAwait(false);
                var named = endpoint with { WorkerId = connection.Hello.WorkerId };
                if (connection.Hello.ClusterManaged)
                {
                    // Its shards follow a placement plan that can change under a fixed table: join the cluster instead.
                    throw new ExpertDispatchException(Grpc.Core.StatusCode.FailedPrecondition,
                        $"worker {named.WorkerId} at {named.Endpoint} belongs to an expert cluster whose placement changes; --workers is for workers with static shards (--experts): join the cluster with --clustering and its membership options instead",
                        named.WorkerId);
                }
                hellos.Add((named, connection.Hello));
                log($"worker {named.WorkerId} at {named.Endpoint}: plan {connection.Hello.PlanVersion}, {connection.Hello.Shards.Sum(s => s.Experts.Count)} experts, transport {connection.Transport}");
            }
            var source = new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(model, hellos));
            source.GetServingTable();
            return new DistributedExperts(ExpertsMode.FixedWorkers, new GrpcExpertDispatcher(source, pool, loggerFactory.CreateLogger<GrpcExpertDispatcher>()), pool,
                null, null, credentials, loggerFactory, ownsFactory, $"on the fixed workers {settings.FixedWorkers}");
        }
        catch
        {
            await pool.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Parses a comma-separated worker list into endpoints.</summary>
    /// <exception cref="FormatException">Empty, or an entry is not host:port, http(s)://host:port or unix:/path.</exception>
    public static IReadOnlyList<WorkerEndpoint> ParseWorkers(string workers)
    {
        var list = new List<WorkerEndpoint>();
        foreach (var raw in (workers ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string address = raw;
            if (raw.StartsWith("unix:/", StringComparison.Ordinal))
            {
                list.Add(new WorkerEndpoint(raw, raw));
                continue;
            }
            if (!raw.Contains("://", StringComparison.Ordinal))
            {
                address = "http://" + raw;
            }
            if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.IsDefaultPort || uri.AbsolutePath != "/")
            {
                throw new FormatException($"--workers entry '{raw}' is not host:port, http(s)://host:port or unix:/path");
            }
            list.Add(new WorkerEndpoint(raw, $"{uri.Scheme}://{uri.Authority}"));
        }
        if (list.Count == 0)
        {
            throw new FormatException("--workers lists no worker");
        }
        return list;
    }

    /// <summary>The CLI's logging: warnings and above of the client and dispatcher, one line each.</summary>
    public static ILoggerFactory CreateLoggerFactory(Action<string> log)
        => LoggerFactory.Create(b => b.AddProvider(new LineProvider(log)).SetMinimumLevel(LogLevel.Warning)
            .AddFilter("Orleans", LogLevel.Error).AddFilter("Microsoft", LogLevel.Error));

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await _pool.DisposeAsync().ConfigureAwait(false);
        if (Follower is not null)
        {
            await Follower.DisposeAsync().ConfigureAwait(false);
        }
        if (Launcher is not null)
        {
            await Launcher.DisposeAsync().ConfigureAwait(false);
        }
        _credentials?.Dispose();
        if (_ownsLoggerFactory)
        {
            _loggerFactory.Dispose();
        }
    }

    private sealed class LineProvider(Action<string> log) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new LineLogger(log, categoryName);

        public void Dispose()
        {
        }

        private sealed class LineLogger(Action<string> log, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
                => log($"{logLevel}: {category}: {formatter(state, exception)}");
        }
    }
}
