using System.Globalization;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Hosting;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The options <c>serve</c> and <c>infer</c> share to move routed experts out of process: join an expert cluster
/// (<c>--clustering Localhost|Redis|AdoNet</c> with its membership options, the same keys and
/// <c>DISTRIBUTED_Cluster__*</c> variables the workers read), start N local workers first (<c>--local-workers N</c>),
/// or use fixed static-shard workers (<c>--workers host:port,...</c>).
/// </summary>
public static class DistributedExpertsCli
{
    /// <summary>Options that take a value.</summary>
    public static readonly IReadOnlyList<string> Options =
        ["local-workers", "gpus", "workers", "wire", "micro-batch", "quantize", "clustering", "redis", "cluster-id", "service-id", "gateways", "tls-cert", "tls-key", "tls-ca"];

    /// <summary>Switches.</summary>
    public static readonly IReadOnlyList<string> Flags = ["insecure", "fp8-activations"];

    /// <summary>Usage text of these options.</summary>
    public const string Usage =
        "[--local-workers N [--gpus 0,1,...] | --workers host:port,... | --clustering Localhost|Redis|AdoNet [--redis HOST:PORT] [--cluster-id ID] [--service-id ID]\n"
        + "                   [--gateways PORT,...] [--Cluster:AdoNetConnectionString ...]] [--wire bf16|fp32|fp8] [--micro-batch N|off] [--tls-cert PEM --tls-key PEM --tls-ca PEM] [--insecure]\n"
        + "                  [--quantize none|fp8] [--fp8-activations]   (routed experts quantized to FP8 at load; W8A8 FP8 experts; in process or on workers)\n"
        + "                  (--wire without workers: experts in process, their rows rounded as that wire would round them)\n"
        + "                  (--gpus: one CUDA device per local worker, worker i gets --gpu of the i-th entry; exactly N distinct ordinals)";

    /// <summary>
    /// Maps the options given in <paramref name="args"/> to configuration keys in <paramref name="keys"/>, checking
    /// each value (a usage error names the option).
    /// </summary>
    /// <exception cref="UsageException">A malformed value.</exception>
    public static void MapOptions(CliArgs args, IDictionary<string, string?> keys)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(keys);
        if (args.Has("local-workers"))
        {
            keys["LocalCluster:Workers"] = args.Int("local-workers", 0, 1, 64).ToString(CultureInfo.InvariantCulture);
        }
        if (args.Get("gpus") is { } gpus)
        {
            int[] ordinals = ParseGpus(gpus);
            for (int i = 0; i < ordinals.Length; i++)
            {
                keys[$"LocalCluster:Gpus:{i}"] = ordinals[i].ToString(CultureInfo.InvariantCulture);
            }
        }
        if (args.Get("workers") is { } workers)
        {
            try
            {
                DistributedExperts.ParseWorkers(workers);
            }
            catch (FormatException ex)
            {
                throw new UsageException(ex.Message);
            }
            keys["Distribution:Workers"] = workers;
        }
        if (args.Get("wire") is { } wire)
        {
            try
            {
                keys["Distribution:WireDType"] = DistributionOptions.ParseWire(wire).ToString();
            }
            catch (FormatException ex)
            {
                throw new UsageException(ex.Message);
            }
        }
        if (args.Get("micro-batch") is { } microBatch)
        {
            try
            {
                keys["Distribution:MicroBatchMinTokens"] = DistributionOptions.ParseMicroBatch(microBatch).ToString(CultureInfo.InvariantCulture);
            }
            catch (FormatException ex)
            {
                throw new UsageException(ex.Message);
            }
        }
        if (args.Get("quantize") is { } quantize)
        {
            try
            {
                keys["Distribution:Quantize"] = Checkpoint.ExpertLoadOptions.ParseQuantize(quantize).ToString();
            }
            catch (FormatException ex)
            {
                throw new UsageException(ex.Message);
            }
        }
        if (args.Has("fp8-activations"))
        {
            keys["Distribution:Fp8Activations"] = "true";
        }
        if (args.Has("clustering"))
        {
            keys["Cluster:Clustering"] = args.Enum("clustering", ClusteringMode.Localhost).ToString();
        }
        Put(args, keys, "redis", "Cluster:RedisConnectionString");
        Put(args, keys, "cluster-id", "Cluster:ClusterId");
        Put(args, keys, "service-id", "Cluster:ServiceId");
        if (args.Get("gateways") is { } gateways)
        {
            var ports = gateways.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            if (ports.Length == 0 || ports.Any(p => !int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) || n is <= 0 or > 65535))
            {
                throw new UsageException($"--gateways must list TCP ports separated by commas, got '{gateways}'");
            }
            for (int i = 0; i < ports.Length; i++)
            {
                keys[$"Cluster:GatewayPorts:{i}"] = ports[i];
            }
        }
        Put(args, keys, "tls-cert", "Tls:CertificatePath");
        Put(args, keys, "tls-key", "Tls:KeyPath");
        Put(args, keys, "tls-ca", "Tls:CaPath");
        if (args.Has("insecure"))
        {
            keys["Tls:AllowInsecure"] = "true";
        }
    }

    /// <summary>
    /// <c>--gpus 0,1,...</c>: CUDA device ordinals separated by commas, each in [0, 1023], none twice.
    /// </summary>
    /// <exception cref="UsageException">An empty list, a value that is not such an ordinal, or a repeated one (the message names <c>--gpus</c>).</exception>
    public static int[] ParseGpus(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        string[] parts = value.Split(',', StringSplitOptions.TrimEntries);
        var ordinals = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ordinals[i]) || ordinals[i] > 1023)
            {
                throw new UsageException($"--gpus must list CUDA device ordinals (0-1023) separated by commas, got '{value}'");
            }
        }
        if (ordinals.Distinct().Count() != ordinals.Length)
        {
            throw new UsageException($"--gpus '{value}' names a device twice: one GPU per worker");
        }
        return ordinals;
    }

    private static void Put(CliArgs args, IDictionary<string, string?> keys, string option, string key)
    {
        if (args.Get(option) is { } value)
        {
            keys[key] = value;
        }
    }

    /// <summary>
    /// Where the experts run according to <paramref name="configuration"/>: null in-process (no cluster, local or fixed
    /// workers configured), else the settings for <see cref="DistributedExperts.StartAsync"/>.
    /// </summary>
    /// <param name="configuration">The merged configuration.</param>
    /// <param name="modelDirectory">The model local workers open.</param>
    /// <param name="cpuPrecision">The coordinator's CPU precision, given to local workers so experts compute alike.</param>
    /// <exception cref="UsageException">Contradictory settings, or an invalid one (every problem named).</exception>
    public static ExpertsSettings? Settings(CoordinatorConfiguration configuration, string modelDirectory, string? cpuPrecision)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        bool local = configuration.Has("LocalCluster:Workers");
        bool fixedWorkers = configuration.Has("Distribution:Workers");
        bool cluster = configuration.Has("Cluster:Clustering");
        if (local && fixedWorkers)
        {
            throw new UsageException("--local-workers and --workers are mutually exclusive");
        }
        if (fixedWorkers && cluster)
        {
            throw new UsageException("--workers (fixed static-shard workers) and --clustering (an expert cluster) are mutually exclusive");
        }
        if (!local && configuration.Has("LocalCluster:Gpus"))
        {
            throw new UsageException("--gpus (LocalCluster:Gpus) assigns GPUs to local workers: it needs --local-workers N");
        }
        if (!local && !fixedWorkers && !cluster)
        {
            foreach (var (key, option) in new[] { ("Distribution:MicroBatchMinTokens", "--micro-batch"), ("Cluster:RedisConnectionString", "--redis"),
                ("Cluster:GatewayPorts", "--gateways"), ("Cluster:AdoNetConnectionString", "--Cluster:AdoNetConnectionString") })
            {
                if (configuration.Has(key))
                {
                    throw new UsageException($"{key} ({option}) needs --local-workers, --workers or --clustering");
                }
            }
            return null;
        }
        try
        {
            var distribution = configuration.Bind<DistributionOptions>(DistributionOptions.SectionName);
            // The cluster credential: Cluster:Token as on a worker, else Distribution:ClusterToken, else the options'
            // default, DISTRIBUTED_CLUSTER_TOKEN. A weak one fails Validate below (named, never shown).
            if (configuration.Configuration[ClusterToken.ConfigurationKey] is { Length: > 0 } token)
            {
                distribution.ClusterToken = token;
            }
            var membership = configuration.Bind<ExpertClusterOptions>(ExpertClusterOptions.SectionName);
            if (configuration.Has("Cluster:GatewayPorts"))
            {
                // The binder appends to the default list; the configured ports replace it.
                membership.GatewayPorts = [.. configuration.Configuration.GetSection("Cluster:GatewayPorts").GetChildren()
                    .Select(c => int.TryParse(c.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int p) ? p : -1)];
            }
            var tls = configuration.Bind<ClusterTlsOptions>(ClusterTlsOptions.SectionName);
            if (configuration.Has("Cluster:RedisConnectionString") && membership.Clustering != ClusteringMode.Redis)
            {
                throw new UsageException("--redis (Cluster:RedisConnectionString) needs --clustering Redis");
            }
            LocalClusterOptions? localOptions = null;
            if (local)
            {
                localOptions = configuration.Bind<LocalClusterOptions>(LocalClusterOptions.SectionName);
                localOptions.ModelDirectory = modelDirectory;
                localOptions.Experts = distribution.ExpertLoad;
                if (cpuPrecision is not null)
                {
                    localOptions.WorkerSettings["cpu-precision"] = cpuPrecision;
                }
            }
            var mode = fixedWorkers ? ExpertsMode.FixedWorkers : ExpertsMode.Cluster;
            var errors = distribution.Validate().Concat(tls.Validate()).ToList();
            if (mode == ExpertsMode.Cluster)
            {
                errors.AddRange(membership.Validate(isSilo: false).Where(e => !local || !e.StartsWith("Cluster:GatewayPorts", StringComparison.Ordinal)));
                errors.AddRange(localOptions?.Validate() ?? []);
            }
            if (errors.Count > 0)
            {
                throw new UsageException(string.Join("; ", errors));
            }
            return new ExpertsSettings(mode, membership, tls, distribution, localOptions, distribution.Workers);
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException ex)
        {
            throw new UsageException(string.Join("; ", ex.Failures));
        }
    }

    /// <summary>
    /// Starts the experts' side for <paramref name="settings"/> (null: in-process, returns null). Progress and the local
    /// workers' problems go to <paramref name="log"/>. With <paramref name="waitServing"/> (infer) it waits until the
    /// cluster serves every expert.
    /// </summary>
    public static async Task<DistributedExperts?> StartAsync(ExpertsSettings? settings, string modelDirectory, TextWriter log, bool waitServing,
        CancellationToken cancellationToken, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(log);
        if (settings is null)
        {
            return null;
        }
        var experts = await DistributedExperts.StartAsync(settings, modelDirectory, line => WorkerLine(log, line), loggerFactory, cancellationToken).ConfigureAwait(false);
        if (waitServing && experts.Follower is { } follower && settings.LocalWorkers is null)
        {
            try
            {
                await follower.WaitConnectedAsync(settings.Distribution.ReadyTimeout, cancellationToken).ConfigureAwait(false);
                await follower.WaitForServingAsync(1, settings.Distribution.ReadyTimeout, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await experts.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
        return experts;
    }

    /// <summary>
    /// <c>--wire X</c> (<c>Distribution:WireDType</c>) without workers: the routed experts run in process with their rows
    /// rounded as that wire would round them (FP8 dispatch answered in bf16, as on workers), so the run equals the same run on
    /// workers bitwise and shows what the wire's precision costs. Null when no wire dtype is configured or the experts run
    /// on workers (<paramref name="settings"/> not null). Dispose it after the engine.
    /// </summary>
    public static Moe.LocalExpertDispatcher? InProcessWire(CoordinatorConfiguration configuration, ExpertsSettings? settings,
        Checkpoint.CheckpointReader checkpoint, Kernels.IKernelBackend backend)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        if (settings is not null || !configuration.Has("Distribution:WireDType"))
        {
            return null;
        }
        DistributionOptions options;
        try
        {
            options = configuration.Bind<DistributionOptions>(DistributionOptions.SectionName);
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException ex)
        {
            throw new UsageException(string.Join("; ", ex.Failures));
        }
        return new Moe.LocalExpertDispatcher(checkpoint, backend, options.ExpertLoad) { WireRounding = (options.WireDType, options.ReplyWireDType) };
    }

    // Workers log at Information; a CLI user needs only their problems, the launcher's progress lines, and each worker's
    // kernel backend (its device), where its rows are decoded (device or host) and placement capacity.
    private static void WorkerLine(TextWriter log, string line)
    {
        bool fromWorker = line.StartsWith('[');
        if (!fromWorker || line.Contains(" fail: ", StringComparison.Ordinal) || line.Contains(" crit: ", StringComparison.Ordinal)
            || line.Contains("Unhandled exception", StringComparison.Ordinal) || line.Contains("] kernels: ", StringComparison.Ordinal)
            || line.Contains(": placement capacity ", StringComparison.Ordinal) || line.Contains(": experts on ", StringComparison.Ordinal))
        {
            lock (log)
            {
                log.WriteLine(line);
            }
        }
    }
}
