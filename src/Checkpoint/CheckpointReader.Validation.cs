using System.Security.Cryptography;
using System.Text;

namespace Distributed.Checkpoint;

public sealed partial class CheckpointReader
{
    private static readonly DType[] MatrixDTypes = [DType.BF16];
    private static readonly DType[] NormDTypes = [DType.BF16, DType.F16, DType.F32];

    /// <summary>
    /// One tensor the Llama 4 text model needs, with the shape its config implies and the dtypes the loaders accept
    /// (matrices BF16; norm weights BF16, F16 or F32).
    /// </summary>
    /// <param name="Name">Name without prefix.</param>
    /// <param name="Shape">Expected dimensions.</param>
    /// <param name="IsNorm">True for RMSNorm weights (any float dtype), false for bf16 matrices.</param>
    /// <param name="Optional">True for <c>lm_head.weight</c> when embeddings are tied.</param>
    public readonly record struct RequiredTensor(string Name, long[] Shape, bool IsNorm, bool Optional);

    /// <summary>
    /// Every tensor the Llama 4 text model of <paramref name="config"/> reads, in Hugging Face order: embeddings; per
    /// layer the two norms, q/k/v/o projections, then either the dense MLP (<c>feed_forward.gate/up/down_proj</c>) or
    /// the MoE block (router <c>[E, H]</c>, <c>experts.gate_up_proj [E, H, 2I]</c>, <c>experts.down_proj [E, I, H]</c>,
    /// shared expert gate/up <c>[I, H]</c>, down <c>[H, I]</c>); the final norm; <c>lm_head</c> (optional when tied).
    /// qk-norm is a weightless L2 norm and has no tensor.
    /// </summary>
    public static IEnumerable<RequiredTensor> RequiredTensors(Llama4TextConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        long h = config.HiddenSize, v = config.VocabSize, e = config.NumExperts, i = config.IntermediateSize;
        long q = (long)config.NumHeads * config.HeadDim, kv = (long)config.NumKvHeads * config.HeadDim;
        long mlp = config.IntermediateSizeMlp;
        yield return new(Llama4TensorNames.Embeddings, [v, h], false, false);
        for (int l = 0; l < config.NumLayers; l++)
        {
            yield return new(Llama4TensorNames.InputNorm(l), [h], true, false);
            yield return new(Llama4TensorNames.PostAttentionNorm(l), [h], true, false);
            yield return new(Llama4TensorNames.QProj(l), [q, h], false, false);
            yield return new(Llama4TensorNames.KProj(l), [kv, h], false, false);
            yield return new(Llama4TensorNames.VProj(l), [kv, h], false, false);
            yield return new(Llama4TensorNames.OProj(l), [h, q], false, false);
            if (config.IsMoeLayer(l))
            {
                yield return new(Llama4TensorNames.Router(l), [e, h], false, false);
                yield return new(Llama4TensorNames.ExpertsGateUp(l), [e, h, 2 * i], false, false);
                yield return new(Llama4TensorNames.ExpertsDown(l), [e, i, h], false, false);
                yield return new(Llama4TensorNames.SharedGate(l), [i, h], false, false);
                yield return new(Llama4TensorNames.SharedUp(l), [i, h], false, false);
                yield return new(Llama4TensorNames.SharedDown(l), [h, i], false, false);
            }
            else
            {
                yield return new(Llama4TensorNames.MlpGate(l), [mlp, h], false, false);
                yield return new(Llama4TensorNames.MlpUp(l), [mlp, h], false, false);
                yield return new(Llama4TensorNames.MlpDown(l), [h, mlp], false, false);
            }
        }
        yield return new(Llama4TensorNames.FinalNorm, [h], true, false);
        yield return new(Llama4TensorNames.LmHead, [v, h], false, config.TieWordEmbeddings);
    }

    /// <summary>Checks every <see cref="RequiredTensors"/> entry; the first missing or mismatched one is the error.</summary>
    private void ValidateModelTensors()
    {
        foreach (var t in RequiredTensors(Config))
        {
            if (!_tensors.TryGetValue(t.Name, out var entry))
            {
                if (t.Optional)
                {
                    continue;
                }
                throw new CheckpointException(
                    $"tensor '{TensorPrefix}{t.Name}' (shape {FormatShape(t.Shape)}) is missing from the checkpoint in {Directory}");
            }
            Check(entry, t.Shape, t.IsNorm ? NormDTypes : MatrixDTypes);
        }
    }

    private static string ComputeFingerprint(Llama4TextConfig config, string[] sortedNames, Dictionary<string, Entry> tensors)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var sb = new StringBuilder();
        sb.Append("llama4-checkpoint-fingerprint/v1\n");
        sb.Append(Llama4ConfigParser.ToJson(config));
        sb.Append("tensors\n");
        foreach (string name in sortedNames)
        {
            var info = tensors[name].Info;
            sb.Append(name).Append('\t').Append(SafetensorsDTypes.ToText(info.DType)).Append('\t')
              .AppendJoin(',', info.Shape).Append('\n');
            if (sb.Length > 1 << 16)
            {
                hash.AppendData(Encoding.UTF8.GetBytes(sb.ToString()));
                sb.Clear();
            }
        }
        hash.AppendData(Encoding.UTF8.GetBytes(sb.ToString()));
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
