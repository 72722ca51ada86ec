using System.Security.Cryptography;
using System.Text;
using Distributed.Protocol.Contracts;

namespace Distributed.Checkpoint;

/// <summary>Builds the <see cref="ModelDescriptor"/> that coordinator, workers and the placement grain compare.</summary>
public static class ModelDescriptors
{
    /// <summary>
    /// The descriptor of an opened checkpoint whose experts are loaded with <paramref name="options"/> (default: as
    /// stored). The fingerprint is the checkpoint's (<see cref="CheckpointReader.Fingerprint"/>: an FP8 checkpoint's
    /// tensor index differs from its bf16 source's), except with <see cref="ExpertQuantization.Fp8"/>: then it is the
    /// lower-case hex SHA-256 of <c>"{checkpoint fingerprint}\nexperts quantized at load: fp8-e4m3 per output channel\n"</c>,
    /// so a coordinator and a worker that disagree on quantizing never talk. The activation rule is not part of it (the
    /// weights are the same); workers report it in their handshake instead.
    /// </summary>
    /// <exception cref="CheckpointException">The options do not apply to this checkpoint.</exception>
    public static ModelDescriptor FromCheckpoint(CheckpointReader checkpoint, ExpertLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        options ??= ExpertLoadOptions.Default;
        if (options.Problem(checkpoint.ExpertFormat) is { } problem)
        {
            throw new CheckpointException($"{checkpoint.Directory}: {problem}");
        }
        var c = checkpoint.Config;
        return new ModelDescriptor(Fingerprint(checkpoint.Fingerprint, options), c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumExperts,
            [.. c.MoeLayerIndices], options.ResidentFormat(checkpoint.ExpertFormat));
    }

    /// <summary>The fingerprint of a checkpoint with fingerprint <paramref name="checkpointFingerprint"/> loaded with <paramref name="options"/>.</summary>
    public static string Fingerprint(string checkpointFingerprint, ExpertLoadOptions options)
    {
        ArgumentNullException.ThrowIfNull(checkpointFingerprint);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Quantize == ExpertQuantization.None)
        {
            return checkpointFingerprint;
        }
        byte[] text = Encoding.UTF8.GetBytes($"{checkpointFingerprint}\nexperts quantized at load: fp8-e4m3 per output channel\n");
        return Convert.ToHexStringLower(SHA256.HashData(text));
    }
}
