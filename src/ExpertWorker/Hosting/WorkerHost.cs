using System.Globalization;
using System.Net;
using Distributed.ExpertWorker.Compute;
using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Placement;
using Distributed.ExpertWorker.Services;
using Distributed.ExpertWorker.Weights;
using Distributed.Hosting;
using Distributed.Kernels;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Wire;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// One expert worker process: Kestrel serving the gRPC data plane (h2c, guarded by <see cref="DataPlaneSecurity"/>) and, unless a static shard is configured, an
/// Orleans silo in the same process. Kestrel starts first so the silo can advertise the bound endpoint in its metadata
/// (the data-plane port may be 0). Both share one <see cref="ShardStore"/>; only assigned experts are ever loaded.
/// </summary>
public sealed partial class WorkerHost : IAsyncDisposable
{
    /// <summary>The machine-readable line printed once the worker serves (tests and launchers parse it).</summary>
    public const string ReadyMarker = "EXPERT_WORKER_READY";

    private readonly CheckpointReader _checkpoint;
    private readonly IKernelBackend _backend;
    private int _disposed;

    private WorkerHost(WebApplication web, IHost? silo, ShardStore store, CheckpointReader checkpoint, IKernelBackend backend, string grpcAddress, string workerId)
    {
        Web = web;
        Silo = silo;
        Store = store;
        _checkpoint = checkpoint;
        _backend = backend;
        GrpcAddress = grpcAddress;
        WorkerId = workerId;
    }

    /// <summary>The data-plane web host.</summary>
    public WebApplication Web { get; }

    /// <summary>The silo host, or null for a static shard.</summary>
    public IHost? Silo { get; }

    /// <summary>The experts served.</summary>
    public ShardStore Store { get; }

    /// <summary>Bound data-plane address, e.g. <c>http://127.0.0.1:40123</c>.</summary>
    public string GrpcAddress { get; }

    /// <summary>This worker's id.</summary>
    public string WorkerId { get; }

    /// <summary>Bound operations address (<c>/metrics</c>, <c>/healthz/*</c>), e.g. <c>http://127.0.0.1:40124</c>; null when off.</summary>
    public string? OpsAddress { get; private init; }

    /// <summary>Validates configuration, opens the checkpoint, and starts Kestrel (and the silo).</summary>
    /// <param name="configuration">Sections <c>ExpertWorker</c>, <c>Cluster</c>, <c>Placement</c>, <c>Logging</c>.</param>
    /// <param name="backendFactory">Backend to run experts on; default <see cref="KernelBackendFactory"/> with <c>KernelBackend</c> and <c>KernelThreads</c>.</param>
    /// <param name="configureLogging">Extra logging setup (tests route logs to their output).</param>
    /// <exception cref="OptionsValidationException">A setting is invalid; every failure is listed by name.</exception>
    /// <exception cref="CheckpointException">The model directory is unusable.</exception>
    public static async Task<WorkerHost> StartAsync(
        IConfiguration configuration,
        Func<ExpertWorkerOptions, IKernelBackend>? backendFactory = null,
        Action<ILoggingBuilder>? configureLogging = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var options = Bind<ExpertWorkerOptions>(configuration, ExpertWorkerOptions.SectionName);
        var cluster = Bind<ExpertClusterOptions>(configuration, ExpertClusterOptions.SectionName);
        var placement = Bind<PlacementOptions>(configuration, PlacementOptions.SectionName);
        var telemetry = Bind<TelemetryOptions>(configuration, TelemetryOptions.SectionName);
        var tlsOptions = Bind<ClusterTlsOptions>(configuration, ClusterTlsOptions.SectionName);
        Validate(options, cluster, placement, telemetry, tlsOptions);
        var credential = DataPlaneSecurity.ResolveCredential(configuration, options);
        ClusterCredentials? tls;
        try
        {
            tls = ClusterCredentials.Load(tlsOptions);
        }
        catch (InvalidOperationException ex)
        {
            throw new OptionsValidationException(ClusterTlsOptions.SectionName, typeof(ClusterTlsOptions), [ex.Message]);
        }

        var checkpoint = CheckpointReader.Open(options.ModelDirectory);
        IKernelBackend? backend = null;
        try
        {
            backend = backendFactory is null ? CreateBackend(options, Console.Error) : backendFactory(options);
            if (options.ExpertLoad.Problem(checkpoint.ExpertFormat) is { } problem)
            {
                throw new OptionsValidationException(ExpertWorkerOptions.SectionName, typeof(ExpertWorkerOptions),
                    [$"ExpertWorker:Quantize / ExpertWorker:Fp8Activations: {problem}"]);
            }
            var model = ModelDescriptors.FromCheckpoint(checkpoint, options.ExpertLoad);
            // Measured before any expert is loaded: the placement fills what this reports.
            var capacity = WorkerCapacity.Measure(options, backend, model);
            string workerId = string.IsNullOrWhiteSpace(options.WorkerId)
                ? $"w-{Environment.MachineName}-{Environment.ProcessId}"
                : options.WorkerId;
            return await StartCoreAsync(configuration, options, cluster, telemetry, tls, tlsOptions, credential, checkpoint, backend, model, capacity, workerId,
                configureLogging, cancellationToken);
        }
        catch
        {
            tls?.Dispose();
            backend?.Dispose();
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The expert worker's kernel backend: <see cref="ExpertWorkerOptions.KernelBackend"/> on device
    /// <see cref="ExpertWorkerOptions.Gpu"/> (0 when unset). A <c>--gpu</c> at or above the number of devices the CUDA
    /// driver reports, and an explicit CUDA backend that cannot start, are configuration errors (exit 2); with Auto on a
    /// machine without a usable device the experts run on the CPU and <paramref name="log"/> says the GPU setting is unused.
    /// </summary>
    /// <exception cref="OptionsValidationException">The device ordinal is out of range, or CUDA was asked for and is unusable.</exception>
    public static IKernelBackend CreateBackend(ExpertWorkerOptions options, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(log);
        if (options.Gpu is int gpu && options.KernelBackend != KernelBackendKind.Cpu)
        {
            int count = Kernels.Cuda.CudaKernelBackend.CountDevices(out _);
            if (count > 0 && gpu >= count)
            {
                throw new OptionsValidationException(ExpertWorkerOptions.SectionName, typeof(ExpertWorkerOptions),
                    [string.Create(CultureInfo.InvariantCulture,
                        $"--gpu (ExpertWorker:Gpu) {gpu} is out of range: the CUDA driver reports {count} device(s), ordinals 0-{count - 1}")]);
            }
        }
        var kernels = new KernelOptions
        {
            Backend = options.KernelBackend,
            Threads = options.KernelThreads,
            CpuPrecision = options.KernelCpuPrecision,
            DeviceOrdinal = options.Gpu ?? 0,
        };
        IKernelBackend backend;
        try
        {
            backend = KernelBackendFactory.Create(kernels, log);
        }
        catch (Kernels.Cuda.CudaUnavailableException ex)
        {
            throw new OptionsValidationException(ExpertWorkerOptions.SectionName, typeof(ExpertWorkerOptions),
                [$"--backend cuda (ExpertWorker:KernelBackend) on device {kernels.DeviceOrdinal}: {ex.Message}"]);
        }
        if (options.Gpu is int unused && backend.Capabilities.DeviceOrdinal < 0)
        {
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kernels: --gpu {unused} (ExpertWorker:Gpu) is unused: no CUDA device is usable, the experts run on {backend.Name}"));
        }
        return backend;
    }

    private static void Validate(ExpertWorkerOptions options, ExpertClusterOptions cluster, PlacementOptions placement, TelemetryOptions telemetry,
        ClusterTlsOptions tls)
    {
        var failures = new List<string>(telemetry.Validate());
        failures.AddRange(tls.Validate());
        var attr = new ExpertWorkerOptionsValidator().Validate(ExpertWorkerOptions.SectionName, options);
        if (attr.Failed)
        {
            failures.AddRange(attr.Failures);
        }
        if (string.IsNullOrWhiteSpace(options.ModelDirectory))
        {
            failures.Add("ExpertWorker:ModelDirectory is required");
        }
        if (options.Gpu is int gpu && options.KernelBackend == KernelBackendKind.Cpu)
        {
            failures.Add(string.Create(CultureInfo.InvariantCulture,
                $"--gpu (ExpertWorker:Gpu) {gpu} needs a CUDA backend, but --backend cpu (ExpertWorker:KernelBackend) runs the experts on the CPU"));
        }
        if (!IPAddress.TryParse(options.GrpcHost, out var grpcHost))
        {
            failures.Add($"ExpertWorker:GrpcHost '{options.GrpcHost}' is not an IP address");
        }
        else if (tls.RefuseCleartext(grpcHost, "the data plane (ExpertWorker:GrpcHost)", dataPlane: true) is { } refused)
        {
            failures.Add(refused);
        }
        if (string.IsNullOrWhiteSpace(options.StaticExperts))
        {
            failures.AddRange(cluster.Validate(isSilo: true));
            failures.AddRange(placement.Validate());
            if (cluster.Clustering != ClusteringMode.Localhost && IPAddress.TryParse(cluster.AdvertisedAddress, out var advertised)
                && tls.RefuseCleartext(advertised, "the Orleans silo and gateway (Cluster:AdvertisedAddress)") is { } refusedSilo)
            {
                failures.Add(refusedSilo);
            }
        }
        if (failures.Count > 0)
        {
            throw new OptionsValidationException(ExpertWorkerOptions.SectionName, typeof(ExpertWorkerOptions), failures);
        }
    }

    private static async Task<WorkerHost> StartCoreAsync(
        IConfiguration configuration, ExpertWorkerOptions options, ExpertClusterOptions cluster, TelemetryOptions telemetry, ClusterCredentials? tls,
        ClusterTlsOptions tlsOptions, ClusterToken? credential, CheckpointReader checkpoint,
        IKernelBackend backend, ModelDescriptor model, WorkerCapacity capacity, string workerId, Action<ILoggingBuilder>? configureLogging, CancellationToken ct)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Configuration.AddConfiguration(configuration);
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        AddDefaultFilters(builder.Logging);
        configureLogging?.Invoke(builder.Logging);
        int maxMessage = options.MaxMessageBytes(model.HiddenSize);
        ListenOptions? grpcListen = null;
        ListenOptions? opsListen = null;
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Parse(options.GrpcHost), options.GrpcPort, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                if (tls is not null && tlsOptions.DataPlane)
                {
                    // Mutual TLS: the coordinator must present a certificate the cluster CA signed (Tls:CaPath).
                    o.UseHttps(https =>
                    {
                        https.ServerCertificate = tls.Certificate;
                        https.ServerCertificateChain = tls.Intermediates;
                        https.ClientCertificateMode = Microsoft.AspNetCore.Server.Kestrel.Https.ClientCertificateMode.RequireCertificate;
                        https.ClientCertificateValidation = (certificate, chain, errors) => tls.ValidatePeer(certificate, chain, errors);
                        https.HandshakeTimeout = TimeSpan.FromSeconds(10);
                    });
                }
                grpcListen = o;
            });
            if (options.OpsPort >= 0)
            {
                // Prometheus and kubelet probes speak HTTP/1.1; the data-plane port is h2c only.
                k.Listen(IPAddress.Parse(options.GrpcHost), options.OpsPort, o =>
                {
                    o.Protocols = HttpProtocols.Http1;
                    opsListen = o;
                });
            }
            if (!string.IsNullOrWhiteSpace(options.UnixSocketPath))
            {
                k.ListenUnixSocket(options.UnixSocketPath, o => o.Protocols = HttpProtocols.Http2);
            }
            k.Limits.MaxRequestBodySize = null;
            // Loopback is CPU-bound, not window-bound (STACK-NOTES §5), but 96 KiB default windows stall 40 MiB frames.
            k.Limits.Http2.InitialConnectionWindowSize = 64 << 20;
            k.Limits.Http2.InitialStreamWindowSize = 32 << 20;
            k.Limits.Http2.MaxFrameSize = 1 << 20;
            k.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(30);
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = maxMessage;
            o.MaxSendMessageSize = maxMessage;
            o.EnableDetailedErrors = false;
        });
        var loggerFactory = LoggerFactory.Create(l =>
        {
            l.AddConfiguration(configuration.GetSection("Logging"));
            l.AddSimpleConsole(o => o.SingleLine = true);
            AddDefaultFilters(l);
            configureLogging?.Invoke(l);
        });
        var store = new ShardStore(workerId, model, new CheckpointExpertLoader(checkpoint, backend, options.ExpertLoad), options.MaxRowsPerDispatch, options.WarmUp,
            loggerFactory.CreateLogger<ShardStore>(), options.RetireDelay);
        builder.Services.AddSingleton(store);
        builder.Services.AddSingleton(new ExpertExecutor(backend, options.ExpertLoad.ActivationsTag));
        builder.Services.AddSingleton(Options.Create(options));
        DataPlaneSecurity.Add(builder, options, credential, maxMessage, ctx => opsListen?.IPEndPoint is { } ops && ctx.Connection.LocalPort == ops.Port);
        var instruments = new ExpertWorkerInstruments(store);
        builder.Services.AddSingleton(instruments);
        WorkerOperations.Add(builder, store, telemetry, workerId);
        var web = builder.Build();
        DataPlaneSecurity.Use(web);
        web.MapGrpcService<ExpertComputeService>();
        WorkerOperations.Map(web, telemetry);
        try
        {
            await web.StartAsync(ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            await web.DisposeAsync();
            store.Dispose();
            throw new WorkerStartupException(
                $"the data-plane listeners did not start (gRPC {options.GrpcHost}:{options.GrpcPort}, ops port {options.OpsPort}): {WorkerStartupException.Describe(ex)}", ex);
        }

        bool encrypted = tls is not null && tlsOptions.DataPlane;
        string grpcAddress = BoundAddress(grpcListen, encrypted);
        string? opsAddress = opsListen is null ? null : BoundAddress(opsListen, https: false);
        var log = loggerFactory.CreateLogger<WorkerHost>();
        if (!encrypted && !IPAddress.IsLoopback(IPAddress.Parse(options.GrpcHost)))
        {
            LogInsecure(log, options.GrpcHost);
        }
        LogEffectiveOptions(log, workerId, model.Fingerprint, options.MaxRowsPerDispatch, maxMessage, backend.Name, options.StaticExperts ?? "(cluster plan)");
        LogCapacity(log, workerId, capacity.Bytes, capacity.Bytes / model.ExpertBytes, capacity.Source);

        IHost? silo = null;
        try
        {
            if (!string.IsNullOrWhiteSpace(options.StaticExperts))
            {
                await store.ApplyAsync((ulong)options.StaticPlanVersion, ShardManifest.Parse(options.StaticExperts, model), ct);
            }
            else
            {
                silo = await StartSiloAsync(configuration, cluster, tls, store, model, capacity.Bytes, workerId, grpcAddress, configureLogging, ct);
            }
        }
        catch
        {
            if (silo is not null)
            {
                silo.Dispose();
            }
            await web.StopAsync(CancellationToken.None);
            await web.DisposeAsync();
            store.Dispose();
            throw;
        }
        var host = new WorkerHost(web, silo, store, checkpoint, backend, grpcAddress, workerId) { OpsAddress = opsAddress };
        LogReady(log, workerId, grpcAddress, store.Manifest.Count);
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{ReadyMarker} worker={workerId} grpc={grpcAddress} silo={(silo is null ? 0 : cluster.SiloPort)} gateway={(silo is null ? 0 : cluster.GatewayPort)} pid={Environment.ProcessId} ops={opsAddress ?? "off"}"));
        Console.Out.Flush();
        return host;
    }

    private static async Task<IHost> StartSiloAsync(
        IConfiguration configuration, ExpertClusterOptions cluster, ClusterCredentials? tls, ShardStore store, ModelDescriptor model,
        long capacity, string workerId, string grpcAddress, Action<ILoggingBuilder>? configureLogging, CancellationToken ct)
    {
        var metadata = new Dictionary<string, string>
        {
            [ExpertShardPlacementDirector.WorkerIdKey] = workerId,
            [ExpertShardPlacementDirector.GrpcEndpointKey] = grpcAddress,
            [ExpertShardPlacementDirector.CapacityKey] = capacity.ToString(CultureInfo.InvariantCulture),
        };
        if (cluster.Clustering == ClusteringMode.Localhost && cluster.PrimarySiloPort == 0)
        {
            metadata[PlacementAuthorityDirector.PrimaryKey] = "1";
        }
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [], DisableDefaults = true });
        builder.Configuration.AddConfiguration(configuration);
        builder.Logging.AddConfiguration(configuration.GetSection("Logging"));
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        AddDefaultFilters(builder.Logging);
        configureLogging?.Invoke(builder.Logging);
        builder.Services.AddSingleton(store);
        builder.Services.Configure<PlacementOptions>(configuration.GetSection(PlacementOptions.SectionName));
        builder.Services.AddSingleton(new WorkerDescriptor(workerId, grpcAddress, "", SharedRing.LocalHostId, capacity, model));
        builder.UseOrleans(silo => silo.AddExpertShards(cluster, tls, metadata));
        builder.Services.AddHostedService(sp =>
        {
            var siloAddress = sp.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToParsableString();
            var self = sp.GetRequiredService<WorkerDescriptor>() with { SiloAddress = siloAddress };
            return new WorkerAgent(sp.GetRequiredService<IGrainFactory>(), store, self, sp.GetRequiredService<ILogger<WorkerAgent>>());
        });
        var host = builder.Build();
        try
        {
            await host.StartAsync(ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            host.Dispose();
            throw new WorkerStartupException(
                $"the Orleans silo did not start ({cluster.Clustering} membership, silo port {cluster.SiloPort}, gateway port {cluster.GatewayPort}): {WorkerStartupException.Describe(ex)}", ex);
        }
        catch
        {
            host.Dispose();
            throw;
        }
        return host;
    }

    // A value the binder cannot convert (an unknown enum name, text for a number) is a configuration error like any
    // other: reported by name with exit code 2, not an unhandled exception.
    private static T Bind<T>(IConfiguration configuration, string section)
        where T : class, new()
    {
        var options = new T();
        try
        {
            configuration.GetSection(section).Bind(options);
        }
        catch (InvalidOperationException ex)
        {
            string detail = ex.InnerException is { } inner ? $"{ex.Message} ({inner.Message})" : ex.Message;
            throw new OptionsValidationException(section, typeof(T), [detail]);
        }
        return options;
    }

    // Kestrel writes the bound endpoint (the real port when 0 was asked for) back into the ListenOptions.
    private static string BoundAddress(ListenOptions? listen, bool https) => listen?.IPEndPoint is { } ep
        ? $"{(https ? "https" : "http")}://{(ep.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ep.Address}]" : ep.Address.ToString())}:{ep.Port}"
        : throw new InvalidOperationException("Kestrel did not bind the listener");

    // Orleans logs every option and periodic statistics at Information; the worker's own events stay visible.
    private static void AddDefaultFilters(ILoggingBuilder logging)
    {
        logging.AddFilter("Orleans", LogLevel.Warning);
        logging.AddFilter("Microsoft", LogLevel.Warning);
        logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Information);
        logging.AddFilter("Polly", LogLevel.Warning);
        logging.AddFilter("Grpc", LogLevel.Warning);
        // An unready shard (waiting for its plan, loading) is the readiness probe's answer, not an error: the health
        // service would otherwise log "fail: Health check ready ... Unhealthy" on every normal start.
        logging.AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", LogLevel.Critical);
        // A client without the cluster's certificate is refused by the TLS handshake; Orleans would log a warning with a
        // stack trace per attempt, which lets anyone who can reach the port fill the log.
        logging.AddFilter("Orleans.Connections.Security", LogLevel.Error);
    }

    /// <summary>Waits until the process is asked to stop (SIGTERM / Ctrl+C) or <paramref name="cancellationToken"/> fires.</summary>
    public async Task WaitForShutdownAsync(CancellationToken cancellationToken = default)
    {
        var lifetime = Web.Services.GetRequiredService<IHostApplicationLifetime>();
        var stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var r1 = lifetime.ApplicationStopping.Register(() => stopped.TrySetResult());
        using var r2 = cancellationToken.Register(() => stopped.TrySetResult());
        await stopped.Task;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        // Bounded whatever the cluster's state: a silo leaves membership gracefully when it can, but with the membership
        // store gone Orleans would retry for much longer than a supervisor's grace period (SIGTERM, then SIGKILL).
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(4));
        if (Silo is not null)
        {
            bool stopped = false;
            try
            {
                await Silo.StopAsync(timeout.Token).WaitAsync(TimeSpan.FromSeconds(5));
                stopped = true;
            }
            catch (Exception ex) when (ex is OperationCanceledException or TimeoutException)
            {
            }
            if (stopped)
            {
                Silo.Dispose();
            }
        }
        using var webTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try
        {
            await Web.StopAsync(webTimeout.Token).WaitAsync(TimeSpan.FromSeconds(3));
        }
        catch (Exception ex) when (ex is OperationCanceledException or TimeoutException)
        {
        }
        await Web.DisposeAsync();
        Store.Dispose();
        _backend.Dispose();
        _checkpoint.Dispose();
    }

    [LoggerMessage(EventId = Diagnostics.LogEvents.EffectiveOptions, Level = LogLevel.Information,
        Message = "Worker {WorkerId}: model {Fingerprint}, MaxRowsPerDispatch {MaxRows}, max message {MaxMessageBytes} bytes, backend {Backend}, shard {Shard}")]
    private static partial void LogEffectiveOptions(ILogger logger, string workerId, string fingerprint, int maxRows, int maxMessageBytes, string backend, string shard);

    [LoggerMessage(EventId = Diagnostics.LogEvents.Capacity, Level = LogLevel.Information,
        Message = "Worker {WorkerId}: placement capacity {CapacityBytes} bytes ({Experts} experts), {CapacitySource}")]
    private static partial void LogCapacity(ILogger logger, string workerId, long capacityBytes, long experts, string capacitySource);

    [LoggerMessage(EventId = Diagnostics.LogEvents.InsecureListener, Level = LogLevel.Warning,
        Message = "The data plane listens on {Address} WITHOUT TLS (--insecure): anyone on this network can read the rows; set Tls:CertificatePath, Tls:KeyPath and Tls:CaPath")]
    private static partial void LogInsecure(ILogger logger, string address);

    [LoggerMessage(EventId = Diagnostics.LogEvents.WorkerReady, Level = LogLevel.Information,
        Message = "Worker {WorkerId} serving the data plane on {Endpoint} ({Experts} experts loaded)")]
    private static partial void LogReady(ILogger logger, string workerId, string endpoint, int experts);
}
