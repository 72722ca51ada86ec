using Distributed.Coordinator.Cli;

namespace Distributed.Coordinator.Distribution;

/// <summary>The <c>infer</c> options that move routed experts into worker processes.</summary>
public static class DistributedExpertsCli
{
    /// <summary>
    /// Reads <c>--local-workers N</c>, <c>--workers host:port,...</c> and <c>--wire bf16|fp32|fp8</c> (default bf16) from
    /// <paramref name="args"/>; returns null (experts in-process) when neither worker option is given. Local workers get
    /// the coordinator's <c>--cpu-precision</c>, so the experts compute with the same arithmetic wherever they run.
    /// </summary>
    /// <exception cref="UsageException">Both worker options, N out of range, an unknown wire dtype, a malformed address.</exception>
    /// <param name="experts">How the experts are loaded (<c>--quantize</c>, <c>--fp8-activations</c>): local workers are started with
    /// it, running workers must match it.</param>
    public static async Task<DistributedExperts?> StartAsync(CliArgs args, string modelDirectory, TextWriter log, CancellationToken cancellationToken,
        Checkpoint.ExpertLoadOptions? experts = null)
    {
        ArgumentNullException.ThrowIfNull(args);
        bool local = args.Has("local-workers");
        bool remote = args.Has("workers");
        if (local && remote)
        {
            throw new UsageException("--local-workers and --workers are mutually exclusive");
        }
        var wire = Wire(args);
        if (!local && !remote)
        {
            return null;
        }
        if (local)
        {
            int n = args.Int("local-workers", 0, 1, 64);
            var settings = new Dictionary<string, string>();
            if (args.Get("cpu-precision") is { } precision)
            {
                settings["cpu-precision"] = precision;
            }
            return await DistributedExperts.StartLocalAsync(modelDirectory, n, wire, log, cancellationToken, settings, experts).ConfigureAwait(false);
        }
        try
        {
            DistributedExperts.ParseWorkers(args.Get("workers") ?? "");
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
        }
        return await DistributedExperts.ConnectAsync(modelDirectory, args.Get("workers")!, wire, log, cancellationToken, experts).ConfigureAwait(false);
    }

    /// <summary>
    /// <c>--wire X</c> without workers: the routed experts run in process with their rows rounded as that wire would
    /// round them (fp8 dispatch is answered in bf16, as on workers), so the run equals the same run on workers bitwise
    /// and shows what the wire's precision costs. Null when <c>--wire</c> is absent or workers are used. Dispose it after
    /// the engine.
    /// </summary>
    /// <exception cref="UsageException">An unknown wire dtype.</exception>
    public static Moe.LocalExpertDispatcher? InProcessWire(CliArgs args, Checkpoint.CheckpointReader checkpoint, Kernels.IKernelBackend backend,
        Checkpoint.ExpertLoadOptions experts)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (!args.Has("wire") || args.Has("local-workers") || args.Has("workers"))
        {
            return null;
        }
        var options = new DistributionOptions { WireDType = Wire(args) };
        return new Moe.LocalExpertDispatcher(checkpoint, backend, experts) { WireRounding = (options.WireDType, options.ReplyWireDType) };
    }

    private static Protocol.Grpc.WireDType Wire(CliArgs args)
    {
        try
        {
            return DistributionOptions.ParseWire(args.Get("wire") ?? "bf16");
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
        }
    }
}
