using Distributed.Protocol.Contracts;

namespace Distributed.Checkpoint;

/// <summary>What a bf16 checkpoint's routed experts are turned into at load.</summary>
public enum ExpertQuantization
{
    /// <summary>Load as stored (<c>--quantize none</c>, the default).</summary>
    None = 0,

    /// <summary>
    /// Quantize each routed expert to FP8 E4M3 with one scale per output channel, by the compressed-tensors recipe the
    /// FP8 release was made with (<see cref="Fp8E4M3.QuantizeWeightRow"/>): the same codes and scales as the FP8
    /// checkpoint made from these bf16 weights (<c>--quantize fp8</c>).
    /// </summary>
    Fp8 = 1,
}

/// <summary>
/// How routed experts are loaded and what they compute: the precision they are held in and, for FP8 experts, the
/// activation rule. Coordinator (in-process experts) and every worker must agree: <see cref="ModelDescriptors"/> folds
/// <see cref="Quantize"/> into the fingerprint, and workers report <see cref="ActivationsTag"/> in their handshake.
/// </summary>
/// <param name="Quantize">Quantization applied at load to bf16 experts.</param>
/// <param name="Activations">For FP8 experts: weight-only (default) or per-token W8A8 (<c>--fp8-activations</c>).</param>
public sealed record ExpertLoadOptions(ExpertQuantization Quantize = ExpertQuantization.None, Fp8ActivationMode Activations = Fp8ActivationMode.WeightOnly)
{
    /// <summary>Weight-only, as stored.</summary>
    public static ExpertLoadOptions Default { get; } = new();

    /// <summary>The handshake tag of <see cref="Activations"/>: <c>weight-only</c> or <c>fp8-per-token</c>.</summary>
    public string ActivationsTag => Activations == Fp8ActivationMode.PerTokenFp8 ? "fp8-per-token" : "weight-only";

    /// <summary>The format the experts are held in when the checkpoint stores them as <paramref name="stored"/>.</summary>
    public ExpertWeightFormat ResidentFormat(ExpertWeightFormat stored) => Quantize == ExpertQuantization.Fp8 ? ExpertWeightFormat.Fp8E4M3 : stored;

    /// <summary>Why these options cannot apply to experts stored as <paramref name="stored"/>, or null when they can.</summary>
    public string? Problem(ExpertWeightFormat stored)
    {
        if (!Enum.IsDefined(Quantize))
        {
            return $"unknown expert quantization {(int)Quantize}";
        }
        if (!Enum.IsDefined(Activations))
        {
            return $"unknown FP8 activation mode {(int)Activations}";
        }
        if (Quantize == ExpertQuantization.Fp8 && stored == ExpertWeightFormat.Fp8E4M3)
        {
            return "--quantize fp8: the checkpoint's routed experts are already FP8";
        }
        if (Activations == Fp8ActivationMode.PerTokenFp8 && ResidentFormat(stored) != ExpertWeightFormat.Fp8E4M3)
        {
            return "--fp8-activations needs FP8 experts (an FP8 checkpoint, or --quantize fp8 on a bf16 one)";
        }
        return null;
    }

    /// <summary>Parses <c>none</c> / <c>fp8</c> (the CLI's <c>--quantize</c>).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static ExpertQuantization ParseQuantize(string text) => text.Trim().ToLowerInvariant() switch
    {
        "none" => ExpertQuantization.None,
        "fp8" => ExpertQuantization.Fp8,
        _ => throw new FormatException($"--quantize '{text}' must be none or fp8"),
    };
}
