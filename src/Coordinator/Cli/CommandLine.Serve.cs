using System.Globalization;
using Distributed.Coordinator.Admin;
using Distributed.Coordinator.Hosting;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Coordinator.Serving.Tokenization;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    private const string ServeUsage =
        "serve           --model DIR [--model-name ID] [--host 127.0.0.1] [--port 8000 (0 = any free port)] [--http2-port N] [--max-queue N]\n"
        + "                  [--max-running N] [--max-batch-tokens N] [--prefill-chunk N] [--kv-memory-mb N] [--kv-dtype fp32|bf16|fp8] [--prefix-caching on|off] [--device-path on|off] [--cuda-graphs on|off]\n"
        + "                  [--default-max-tokens N]\n"
        + "                  [--max-request-bytes N] [--queue-full-status 429|503]\n"
        + "                  [--backend cpu|cuda|auto] [--gpu N] [--threads N] [--cpu-precision fp32|bf16] [--Section:Key value ...]\n"
        + "                  " + Distribution.DistributedExpertsCli.Usage + "\n"
        + "                  [--telemetry on|off (metrics /metrics, /healthz probes, traces; default on)]\n"
        + "                  [--max-images N] [--max-image-bytes N] [--max-image-pixels N] [--max-image-tiles N] [--image-url-allow HOST|URL-PREFIX,...]\n"
        + "                  [--image-fetch-timeout SECONDS]   (image_url chat parts, multimodal models)\n"
        + "                  [--api-key-env NAME (default DISTRIBUTED_API_KEY; required off loopback)] [--allow-unauthenticated]\n"
        + "                  [--admin-host IP] [--admin-port N] [--admin-grpc-port N] [--admin-token-env NAME]   (admin API: docs/ADMIN-API.md)\n"
        + "                  Every option is also a configuration key, read first from DISTRIBUTED_Section__Key environment variables (docs/OPERATIONS.md).";

    /// <summary>
    /// <c>serve</c>: loads the model, tokenizer and continuous-batching scheduler (routed experts in-process, on
    /// <c>--local-workers N</c> started here, or on running <c>--workers host:port,...</c>), starts the OpenAI-compatible HTTP
    /// server, prints <c>listening on http://HOST:PORT</c> on stdout once it accepts connections, and runs until
    /// Ctrl-C or SIGTERM; in-flight requests get <see cref="ServeOptions.ShutdownTimeout"/> to finish. Logs go to stderr.
    /// </summary>
    private static async Task<int> ServeAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken ct)
    {
        var a = new CliArgs(args,
            ["model", "model-name", "host", "port", "http2-port", "max-queue", "max-running", "max-batch-tokens", "prefill-chunk", "kv-memory-mb",
             "prefix-caching", "default-max-tokens", "kv-dtype", "device-path", "cuda-graphs", "max-request-bytes", "queue-full-status", "backend", "gpu", "threads", "cpu-precision", "telemetry", "admin-host", "admin-port",
             "admin-grpc-port", "admin-token-env", "api-key-env", "max-images", "max-image-bytes", "max-image-pixels", "max-image-tiles", "image-url-allow", "image-fetch-timeout",
             .. Distribution.DistributedExpertsCli.Options],
            ["allow-unauthenticated", .. Distribution.DistributedExpertsCli.Flags], configurationKeys: true);
        // Environment (DISTRIBUTED_Section__Key) and --Section:Key settings first; the options below override them.
        var configuration = Configuration(a);
        var bound = BindOrUsage<ServeOptions>(configuration, ServeOptions.SectionName);
        var serve = new ServeOptions
        {
            ModelDirectory = a.Get("model") ?? (string.IsNullOrEmpty(bound.ModelDirectory) ? ModelDirectory(a) : bound.ModelDirectory),
            ModelName = a.Get("model-name") ?? bound.ModelName,
            Host = a.Get("host") ?? bound.Host,
            Port = a.Int("port", bound.Port, 0, 65535),
            Http2Port = a.Has("http2-port") ? a.Int("http2-port", 0, 0, 65535) : bound.Http2Port,
            MaxRequestBodyBytes = a.Int("max-request-bytes", (int)Math.Clamp(bound.MaxRequestBodyBytes, 0, int.MaxValue),
                (int)ServeOptionsValidator.MinRequestBodyBytes, (int)ServeOptionsValidator.MaxRequestBodyBytes),
            QueueFullStatusCode = a.Int("queue-full-status", bound.QueueFullStatusCode, 429, 503),
            ShutdownTimeout = bound.ShutdownTimeout,
            DefaultMaxTokens = a.Int("default-max-tokens", bound.DefaultMaxTokens, 1, int.MaxValue),
            ApiKey = bound.ApiKey,
            ApiKeyEnvironmentVariable = a.Get("api-key-env") ?? bound.ApiKeyEnvironmentVariable,
            AllowUnauthenticated = a.Has("allow-unauthenticated") || bound.AllowUnauthenticated,
        };
        if (a.Has("api-key-env") && serve.ResolveApiKey() is null)
        {
            throw new UsageException($"--api-key-env: the environment variable {serve.ApiKeyEnvironmentVariable} is not set");
        }
        if (!Directory.Exists(serve.ModelDirectory))
        {
            throw new UsageException($"--model: directory '{serve.ModelDirectory}' does not exist");
        }
        var validation = new ServeOptionsValidator().Validate(null, serve);
        if (validation.Failed)
        {
            throw new UsageException(string.Join(" ", validation.Failures));
        }
        var scheduling = SchedulerOptionsFrom(a, BindOrUsage<SchedulerOptions>(configuration, SchedulerOptions.SectionName));
        var admin = AdminOptionsFrom(a, serve.Host, BindOrUsage<Admin.ClusterAdminOptions>(configuration, Admin.ClusterAdminOptions.SectionName));
        var expertsSettings = Distribution.DistributedExpertsCli.Settings(configuration, serve.ModelDirectory, a.Get("cpu-precision"));
        scheduling.KvDType = KvDTypeFrom(a, scheduling.KvDType);
        var expertOptions = ExpertOptionsFrom(configuration, serve.ModelDirectory);
        var imageOptions = ImageOptionsFrom(a, BindOrUsage<Serving.Images.ImageOptions>(configuration, Serving.Images.ImageOptions.SectionName));

        Llama4Tokenizer tokenizer;
        try
        {
            tokenizer = Llama4Tokenizer.Load(serve.ModelDirectory);
        }
        catch (TokenizerException ex)
        {
            stderr.WriteLine($"error: bad tokenizer: {OneLine(ex.Message)}");
            return 1;
        }
        using var backend = CreateBackend(a, stderr, configuration);
        // Declared before the engine and the host so that the workers outlive every request that dispatches to them.
        await using var experts = await Distribution.DistributedExpertsCli.StartAsync(expertsSettings, serve.ModelDirectory, stderr, waitServing: false, ct)
            .ConfigureAwait(false);
        using var wireCheckpoint = expertsSettings is null && configuration.Has("Distribution:WireDType") ? Checkpoint.CheckpointReader.Open(serve.ModelDirectory) : null;
        using var wireRounded = wireCheckpoint is null ? null
            : Distribution.DistributedExpertsCli.InProcessWire(configuration, expertsSettings, wireCheckpoint, backend);
        using var engine = Llama4Engine.Load(serve.ModelDirectory, backend, (Moe.IExpertDispatcher?)experts?.Dispatcher ?? wireRounded, expertOptions);
        // Micro-batch ping-pong only where there is a wire to hide (in-process experts compute inside the dispatch).
        engine.Model.MicroBatching = expertsSettings?.Distribution.MicroBatching() ?? MicroBatching.Off;
        if (tokenizer.VocabSize != engine.Config.VocabSize)
        {
            stderr.WriteLine($"error: tokenizer vocabulary ({tokenizer.VocabSize}) does not match the model's vocab_size ({engine.Config.VocabSize})");
            return 1;
        }
        // Images (issue #13): chat image_url parts, when the checkpoint has a vision tower and --max-images is not 0.
        using var images = engine.Vision is { } vision && imageOptions.MaxImagesPerRequest > 0
            ? new Serving.Images.Llama4ImageInputs(vision.Config, tokenizer, imageOptions)
            : null;
        // Metrics, health probes and traces (issue #6); configured by DISTRIBUTED_Telemetry__* environment variables.
        // --telemetry off exists to measure the instrumentation's cost (tests/Benchmarks serving-load).
        Diagnostics.CoordinatorOperations? operations = null;
        string telemetry = a.Get("telemetry") ?? "on";
        if (telemetry is not ("on" or "off"))
        {
            throw new UsageException($"--telemetry '{telemetry}' must be on or off");
        }
        try
        {
            operations = telemetry == "on"
                ? new Diagnostics.CoordinatorOperations(Diagnostics.CoordinatorOperations.TelemetryFromEnvironment(), experts?.Dispatcher)
                : null;
        }
        catch (ArgumentException ex)
        {
            throw new UsageException(ex.Message);
        }
        using var operationsScope = operations;
        // Cluster admin API (issue #5): on the serving listener, or on its own with --admin-port; in every cluster mode.
        var cluster = experts?.Follower;
        if (admin is not null && cluster is null)
        {
            throw new UsageException(experts is null
                ? "the admin API needs the experts on a cluster (--clustering ..., or --local-workers N); they run in-process here"
                : "the admin API needs the experts on a cluster (--clustering ..., or --local-workers N): --workers is a fixed placement that nothing can change");
        }
        // The admin API (on either listener) reads the serving scheduler's counters once the serving host has made it.
        ContinuousBatchScheduler? servingScheduler = null;
        Func<SchedulerStats?> servingStats = () => Volatile.Read(ref servingScheduler)?.Stats;
        Func<IServiceProvider, Admin.ClusterAdmin>? createAdmin = cluster is null ? null : _ => new Admin.ClusterAdmin(cluster, experts!.Dispatcher, servingStats);
        bool adminOnServe = admin is not null && admin.Host is null;
        var app = ServeHost.Build(serve, tokenizer, sp =>
        {
            var scheduler = new ContinuousBatchScheduler(engine, scheduling, sp.GetRequiredService<ILogger<ContinuousBatchScheduler>>());
            Volatile.Write(ref servingScheduler, scheduler);
            return scheduler;
        }, operations: operations,
            configureServices: services =>
            {
                // The composition root (Hosting/CoordinatorServices): serving is registered by ServeHost, then the
                // expert cluster and the admin API where they apply.
                if (experts is not null)
                {
                    services.AddExpertCluster(experts, expertsSettings!.Distribution);
                }
                if (adminOnServe)
                {
                    services.AddClusterAdmin(admin!, createAdmin!);
                }
            },
            configureApp: adminOnServe ? web => web.MapClusterAdmin() : null,
            images: images, scheduling: scheduling);
        var adminApp = admin is { Host: not null } ? Admin.ClusterAdminHosting.BuildHost(admin, createAdmin!, ServeHost.AddConsoleLogging) : null;
        await using var adminScope = adminApp;
        await using (app.ConfigureAwait(false))
        {
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"serve: model '{serve.ResolveModelId()}' from {serve.ModelDirectory} on {backend.Name} (fingerprint {engine.Fingerprint[..12]}), "
                + $"experts {experts?.Description ?? "in-process"}; "
                + $"max-queue {scheduling.MaxQueuedRequests}, max-running {scheduling.MaxRunningSequences}, max-batch-tokens {scheduling.MaxBatchTokens}, "
                + $"prefill-chunk {scheduling.PrefillChunkTokens}, kv-memory {scheduling.KvMemoryBytes >> 20} MiB ({(scheduling.KvDType ?? Kernels.KvCacheDTypes.DefaultFor(backend)).ToString().ToLowerInvariant()}), prefix-caching {(scheduling.PrefixCaching ? "on" : "off")}, "
                + $"default-max-tokens {serve.DefaultMaxTokens}, max-request-bytes {serve.MaxRequestBodyBytes}, "
                + $"queue-full-status {serve.QueueFullStatusCode}; images {DescribeImages(images, engine)}"));
            try
            {
                await app.StartAsync(ct).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                stderr.WriteLine($"error: cannot listen on {serve.Host}:{serve.Port}: {OneLine(ex.Message)}");
                return 1;
            }
            catch (OptionsValidationException ex)
            {
                stderr.WriteLine($"error: {OneLine(ex.Message)}");
                return 2;
            }
            if (adminApp is not null)
            {
                try
                {
                    await adminApp.StartAsync(ct).ConfigureAwait(false);
                }
                catch (IOException ex)
                {
                    stderr.WriteLine($"error: cannot listen on {admin!.Host}:{admin.Port} for the admin API: {OneLine(ex.Message)}");
                    return 1;
                }
                stdout.WriteLine($"admin API at {Admin.ClusterAdminHosting.BoundAddress(adminApp)}{Admin.AdminEndpoints.Prefix}"
                    + (Admin.ClusterAdminHosting.BoundGrpcAddress(adminApp) is { } g ? $" (gRPC at {g})" : ""));
            }
            else if (adminOnServe)
            {
                stdout.WriteLine($"admin API at {ServeHost.ListeningAddress(app)}{Admin.AdminEndpoints.Prefix}");
            }
            else if (cluster is not null)
            {
                stderr.WriteLine($"serve: admin API disabled (set {new Admin.ClusterAdminOptions().TokenEnvironmentVariable} to enable it)");
            }
            if (serve.ResolveApiKey() is null)
            {
                ServeOptionsValidator.TryParseHost(serve.Host, out var bind);
                stderr.WriteLine(System.Net.IPAddress.IsLoopback(bind)
                    ? $"serve: the OpenAI API takes no API key (set {serve.ApiKeyEnvironmentVariable} to require one)"
                    : $"serve: WARNING: the OpenAI API on {serve.Host} takes no API key (--allow-unauthenticated): anyone who reaches the port can use it");
            }
            else
            {
                stderr.WriteLine($"serve: the OpenAI API requires the API key from {(string.IsNullOrEmpty(serve.ApiKey) ? serve.ApiKeyEnvironmentVariable : "Serve:ApiKey")} (Authorization: Bearer)");
            }
            // The plain "listening on URL" line comes last: a supervisor that waits for it knows every port is ready.
            if (ServeHost.Http2ListeningAddress(app) is { } h2)
            {
                // Worded so that a parser looking for "listening on http://" cannot take it for the main address.
                stdout.WriteLine($"http2 prior-knowledge (h2c) port at {h2}");
            }
            stdout.WriteLine($"listening on {ServeHost.ListeningAddress(app)}");
            stdout.Flush();
            // Returns after Ctrl-C (ct, or the host's own SIGINT handling) or SIGTERM, once the server has stopped.
            await app.WaitForShutdownAsync(ct).ConfigureAwait(false);
        }
        stderr.WriteLine("serve: stopped");
        return 0;
    }

    /// <summary>
    /// The admin API settings: enabled when its token is set (environment variable <c>DISTRIBUTED_ADMIN_TOKEN</c>, or
    /// the one named by <c>--admin-token-env</c>); <c>--admin-port</c> puts it on its own listener (on
    /// <c>--admin-host</c>, default the serving host), else it shares the serving listener. Null when disabled.
    /// </summary>
    private static Admin.ClusterAdminOptions? AdminOptionsFrom(CliArgs a, string serveHost, Admin.ClusterAdminOptions options)
    {
        if (a.Get("admin-token-env") is { } env)
        {
            options.TokenEnvironmentVariable = env;
        }
        bool separate = a.Has("admin-port") || a.Has("admin-host") || a.Has("admin-grpc-port") || options.Host is not null;
        if (options.ResolveToken() is null)
        {
            if (separate || a.Has("admin-token-env"))
            {
                throw new UsageException($"the admin API needs a token: set the {options.TokenEnvironmentVariable} environment variable");
            }
            return null;
        }
        if (separate)
        {
            options.Host = a.Get("admin-host") ?? options.Host ?? serveHost;
            options.Port = a.Int("admin-port", options.Port, 0, 65535);
            options.GrpcPort = a.Has("admin-grpc-port") ? a.Int("admin-grpc-port", 0, 0, 65535) : options.GrpcPort;
        }
        var errors = options.Validate();
        if (errors.Count > 0)
        {
            throw new UsageException(string.Join("; ", errors));
        }
        return options;
    }

    private static bool OnOff(CliArgs a, string name, bool fallback) => a.Get(name) switch
    {
        null => fallback,
        "on" => true,
        "off" => false,
        string other => throw new UsageException($"--{name} '{other}' must be on or off"),
    };

    private static string DescribeImages(Serving.Images.Llama4ImageInputs? images, Llama4Engine engine)
    {
        if (images is null)
        {
            return engine.Vision is null ? "off (no vision tower)" : "off (--max-images 0)";
        }
        var o = images.Options;
        string sources = o.UrlAllowList.Count == 0
            ? "data: URLs only"
            : string.Create(CultureInfo.InvariantCulture, $"remote URLs from {string.Join(",", o.UrlAllowList)} within {o.FetchTimeout.TotalSeconds:0.###} s");
        return string.Create(CultureInfo.InvariantCulture,
            $"max {o.MaxImagesPerRequest}/request, {o.MaxImageBytes} bytes, {o.MaxImagePixels} pixels, {o.MaxImageTiles} tiles, {sources}");
    }

    /// <summary>The image limits and sources (<see cref="Serving.Images.ImageOptions"/>), validated: a bad value is a usage error naming the flag.</summary>
    private static Serving.Images.ImageOptions ImageOptionsFrom(CliArgs a, Serving.Images.ImageOptions defaults)
    {
        var options = new Serving.Images.ImageOptions
        {
            MaxImagesPerRequest = a.Int("max-images", defaults.MaxImagesPerRequest, 0, 256),
            MaxImageBytes = a.Has("max-image-bytes") ? a.Int("max-image-bytes", 0, 1024, 1 << 30) : defaults.MaxImageBytes,
            MaxImagePixels = a.Has("max-image-pixels") ? a.Int("max-image-pixels", 0, 1, 1 << 30) : defaults.MaxImagePixels,
            MaxImageTiles = a.Int("max-image-tiles", defaults.MaxImageTiles, 1, 64),
            FetchTimeout = TimeSpan.FromSeconds(a.Double("image-fetch-timeout", defaults.FetchTimeout.TotalSeconds)),
            UrlAllowList = a.Get("image-url-allow") is { } allow ? [.. allow.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)] : defaults.UrlAllowList,
        };
        var validation = new Serving.Images.ImageOptionsValidator().Validate(null, options);
        if (validation.Failed)
        {
            throw new UsageException(string.Join(" ", validation.Failures));
        }
        return options;
    }

    private static SchedulerOptions SchedulerOptionsFrom(CliArgs a, SchedulerOptions defaults)
    {
        int maxBatchTokens = a.Int("max-batch-tokens", defaults.MaxBatchTokens, 1, 1 << 20);
        // Unless given, the running-sequence and prefill-chunk limits shrink with a small token budget so that
        // "--max-batch-tokens 16" alone is a valid configuration.
        var options = new SchedulerOptions
        {
            MaxQueuedRequests = a.Int("max-queue", defaults.MaxQueuedRequests, 1, 1 << 20),
            MaxBatchTokens = maxBatchTokens,
            MaxRunningSequences = a.Int("max-running", Math.Min(defaults.MaxRunningSequences, maxBatchTokens), 1, 1 << 16),
            PrefillChunkTokens = a.Int("prefill-chunk", Math.Min(defaults.PrefillChunkTokens, maxBatchTokens), 1, 1 << 20),
            KvMemoryBytes = (long)a.Int("kv-memory-mb", (int)(defaults.KvMemoryBytes >> 20), 1, 1 << 24) << 20,
            KvBlockSize = defaults.KvBlockSize,
            KvDType = defaults.KvDType,
            PrefixCaching = OnOff(a, "prefix-caching", defaults.PrefixCaching),
            BackendKvStore = defaults.BackendKvStore,
            RetryAfter = defaults.RetryAfter,
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new UsageException(ex.Message);
        }
        return options;
    }

    private static T BindOrUsage<T>(Hosting.CoordinatorConfiguration configuration, string section)
        where T : class, new()
    {
        try
        {
            return configuration.Bind<T>(section);
        }
        catch (OptionsValidationException ex)
        {
            throw new UsageException(string.Join("; ", ex.Failures));
        }
    }
}
