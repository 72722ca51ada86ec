using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    /// <summary>
    /// How routed experts are loaded (<c>Distribution:Quantize</c>, <c>Distribution:Fp8Activations</c>, set by
    /// <c>--quantize none|fp8</c> and <c>--fp8-activations</c>), checked against the checkpoint's expert format (refused:
    /// quantizing FP8 experts, W8A8 without FP8 experts).
    /// </summary>
    /// <exception cref="UsageException">An unknown value, or options that do not apply to the checkpoint.</exception>
    private static ExpertLoadOptions ExpertOptionsFrom(Hosting.CoordinatorConfiguration configuration, string modelDirectory)
    {
        var options = BindOrUsage<Distribution.DistributionOptions>(configuration, Distribution.DistributionOptions.SectionName).ExpertLoad;
        using var checkpoint = CheckpointReader.Open(modelDirectory);
        if (options.Problem(checkpoint.ExpertFormat) is { } problem)
        {
            throw new UsageException(problem);
        }
        return options;
    }

    /// <summary>
    /// <c>--kv-dtype fp32|bf16|fp8</c>: the KV cache's element type (attention computes in fp32 on the decoded rows);
    /// <paramref name="configured"/> (<c>Scheduler:KvDType</c>) when absent, null meaning the backend's default: bf16 on CUDA, fp32 on the CPU).
    /// </summary>
    /// <exception cref="UsageException">An unknown value.</exception>
    private static KvCacheDType? KvDTypeFrom(CliArgs a, KvCacheDType? configured = null)
    {
        if (a.Get("kv-dtype") is not { } text)
        {
            return configured;
        }
        try
        {
            return KvCacheDTypes.Parse(text);
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
        }
    }
}
