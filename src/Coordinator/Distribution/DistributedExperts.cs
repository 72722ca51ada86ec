using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The routed experts of a CLI run when they live in worker processes: either N local workers started (and stopped)
/// here (<c>--local-workers N</c>), or workers already running, found by address (<c>--workers host:port,...</c>,
/// placement from their handshakes). Dispose stops everything it started.
/// </summary>
public sealed class DistributedExperts : IAsyncDisposable
{
    private readonly LocalWorkerCluster? _cluster;
    private readonly WorkerChannelPool? _pool;
    private readonly ILoggerFactory _loggerFactory;

    private DistributedExperts(GrpcExpertDispatcher dispatcher, LocalWorkerCluster? cluster, WorkerChannelPool? pool, ILoggerFactory loggerFactory)
    {
        Dispatcher = dispatcher;
        _cluster = cluster;
        _pool = pool;
        _loggerFactory = loggerFactory;
    }

    /// <summary>The dispatcher for the engine.</summary>
    public GrpcExpertDispatcher Dispatcher { get; }

    /// <summary>The local worker cluster (<c>--local-workers</c>), or null for workers found by address (no placement authority).</summary>
    public LocalWorkerCluster? Cluster => _cluster;

    /// <summary>Starts <paramref name="localWorkers"/> workers on loopback and waits until the plan serves every expert.</summary>
    /// <param name="workerSettings">Extra worker options (<c>--name value</c>), such as <c>cpu-precision</c>.</param>
    /// <param name="experts">How the workers load their experts (FP8 quantization, W8A8); default as stored.</param>
    public static async Task<DistributedExperts> StartLocalAsync(string modelDirectory, int localWorkers, WireDType wire, TextWriter log, CancellationToken cancellationToken,
        IReadOnlyDictionary<string, string>? workerSettings = null, ExpertLoadOptions? experts = null)
    {
        var loggerFactory = CreateLoggerFactory(log);
        try
        {
            experts ??= ExpertLoadOptions.Default;
            var options = new LocalClusterOptions { Workers = localWorkers, ModelDirectory = modelDirectory, Experts = experts };
            foreach (var (k, v) in workerSettings ?? new Dictionary<string, string>())
            {
                options.WorkerSettings[k] = v;
            }
            var cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions { WireDType = wire, ExpertActivations = experts.ActivationsTag },
                line => WorkerLine(log, line), loggerFactory, cancellationToken).ConfigureAwait(false);
            return new DistributedExperts(cluster.GrpcDispatcher, cluster, null, loggerFactory);
        }
        catch
        {
            loggerFactory.Dispose();
            throw;
        }
    }

    /// <summary>Connects to running workers (<c>host:port</c> or <c>http://host:port</c> or <c>unix:/path</c>, comma-separated).</summary>
    /// <exception cref="FormatException">An address is malformed.</exception>
    /// <exception cref="ExpertDispatchException">A worker refuses the handshake, or their shards do not cover the model.</exception>
    /// <param name="experts">How the workers must have loaded their experts (their fingerprint and handshake are checked against it).</param>
    public static async Task<DistributedExperts> ConnectAsync(string modelDirectory, string workers, WireDType wire, TextWriter log, CancellationToken cancellationToken,
        ExpertLoadOptions? experts = null)
    {
        experts ??= ExpertLoadOptions.Default;
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(modelDirectory))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint, experts);
        }
        var endpoints = ParseWorkers(workers);
        var loggerFactory = CreateLoggerFactory(log);
        var pool = new WorkerChannelPool(model, new DistributionOptions { WireDType = wire, ExpertActivations = experts.ActivationsTag },
            loggerFactory.CreateLogger<WorkerChannelPool>());
        try
        {
            var hellos = new List<(WorkerEndpoint, HelloReply)>();
            foreach (var endpoint in endpoints)
            {
                var connection = await pool.GetAsync(endpoint, cancellationToken).ConfigureAwait(false);
                var named = endpoint with { WorkerId = connection.Hello.WorkerId };
                hellos.Add((named, connection.Hello));
                log.WriteLine($"worker {named.WorkerId} at {named.Endpoint}: plan {connection.Hello.PlanVersion}, {connection.Hello.Shards.Sum(s => s.Experts.Count)} experts, transport {connection.Transport}");
            }
            var source = new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(model, hellos));
            source.GetServingTable();
            return new DistributedExperts(new GrpcExpertDispatcher(source, pool), null, pool, loggerFactory);
        }
        catch
        {
            await pool.DisposeAsync().ConfigureAwait(false);
            loggerFactory.Dispose();
            throw;
        }
    }

    /// <summary>Parses a comma-separated worker list into endpoints.</summary>
    /// <exception cref="FormatException">Empty, or an entry is not host:port, http://host:port or unix:/path.</exception>
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
            if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme != "http" || uri.IsDefaultPort || uri.AbsolutePath != "/")
            {
                throw new FormatException($"--workers entry '{raw}' is not host:port, http://host:port or unix:/path");
            }
            list.Add(new WorkerEndpoint(raw, $"http://{uri.Authority}"));
        }
        if (list.Count == 0)
        {
            throw new FormatException("--workers lists no worker");
        }
        return list;
    }

    // Workers log at Information; a CLI user needs only their problems and the launcher's progress lines.
    private static void WorkerLine(TextWriter log, string line)
    {
        bool fromWorker = line.StartsWith('[');
        if (!fromWorker || line.Contains(" fail: ", StringComparison.Ordinal) || line.Contains(" crit: ", StringComparison.Ordinal)
            || line.Contains("Unhandled exception", StringComparison.Ordinal))
        {
            lock (log)
            {
                log.WriteLine(line);
            }
        }
    }

    private static ILoggerFactory CreateLoggerFactory(TextWriter log)
        => LoggerFactory.Create(b => b.AddProvider(new WriterProvider(log)).SetMinimumLevel(LogLevel.Warning));

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_cluster is not null)
        {
            await _cluster.DisposeAsync().ConfigureAwait(false);
        }
        if (_pool is not null)
        {
            await _pool.DisposeAsync().ConfigureAwait(false);
        }
        _loggerFactory.Dispose();
    }

    private sealed class WriterProvider(TextWriter writer) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new WriterLogger(writer, categoryName);

        public void Dispose()
        {
        }

        private sealed class WriterLogger(TextWriter writer, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                lock (writer)
                {
                    writer.WriteLine($"{logLevel}: {category}: {formatter(state, exception)}");
                }
            }
        }
    }
}
