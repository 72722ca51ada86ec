using Distributed.Coordinator.Cli;

namespace Distributed.Coordinator.Distribution;

/// <summary>The <c>infer</c> options that move routed experts into worker processes.</summary>
public static class DistributedExpertsCli
{
    /// <summary>
    /// Reads <c>--local-workers N</c>, <c>--workers host:port,...</c> and <c>--wire bf16|fp32</c> (default bf16) from
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
        if (!local && !remote)
        {
            if (args.Has("wire"))
            {
                throw new UsageException("--wire needs --local-workers or --workers");
            }
            return null;
        }
        Protocol.Grpc.WireDType wire;
        try
        {
            wire = DistributionOptions.ParseWire(args.Get("wire") ?? "bf16");
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
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
}
