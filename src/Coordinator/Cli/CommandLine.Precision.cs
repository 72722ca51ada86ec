using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    /// <summary>
    /// The options of <c>infer</c>, <c>serve</c> and <c>bench</c> that choose how routed experts are held and computed, and
    /// the element type of the KV cache.
    /// </summary>
    private static readonly string[] ExpertOptionNames = ["quantize", "kv-dtype"];

    /// <summary>The switches among them.</summary>
    private static readonly string[] ExpertFlagNames = ["fp8-activations"];

    /// <summary>
    /// <c>--quantize none|fp8</c> (quantize a bf16 checkpoint's routed experts to FP8 at load, per output channel) and
    /// <c>--fp8-activations</c> (FP8 experts compute W8A8: expert input and SwiGLU output quantized per token), checked
    /// against the checkpoint's expert format (refused: quantizing FP8 experts, W8A8 without FP8 experts).
    /// </summary>
    /// <exception cref="UsageException">An unknown value, or options that do not apply to the checkpoint.</exception>
    private static ExpertLoadOptions ExpertOptionsFrom(CliArgs a, string modelDirectory)
    {
        ExpertQuantization quantize;
        try
        {
            quantize = ExpertLoadOptions.ParseQuantize(a.Get("quantize") ?? "none");
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
        }
        var options = new ExpertLoadOptions(quantize, a.Has("fp8-activations") ? Fp8ActivationMode.PerTokenFp8 : Fp8ActivationMode.WeightOnly);
        using var checkpoint = CheckpointReader.Open(modelDirectory);
        if (options.Problem(checkpoint.ExpertFormat) is { } problem)
        {
            throw new UsageException(problem);
        }
        return options;
    }

    /// <summary>
    /// <c>--kv-dtype fp32|bf16|fp8</c>: the KV cache's element type (attention computes in fp32 on the decoded rows);
    /// null when absent (the backend's default: bf16 on CUDA, fp32 on the CPU).
    /// </summary>
    /// <exception cref="UsageException">An unknown value.</exception>
    private static KvCacheDType? KvDTypeFrom(CliArgs a)
    {
        if (a.Get("kv-dtype") is not { } text)
        {
            return null;
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
