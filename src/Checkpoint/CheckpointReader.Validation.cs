using System.Security.Cryptography;
using System.Text;
using Distributed.Protocol.Contracts;

namespace Distributed.Checkpoint;

public sealed partial class CheckpointReader
{
    private static readonly DType[] MatrixDTypes = [DType.BF16];
    private static readonly DType[] NormDTypes = [DType.BF16, DType.F16, DType.F32];
    private static readonly DType[] Fp8DTypes = [DType.F8E4M3];

    /// <summary>
    /// One tensor the Llama 4 text model needs, with the shape its config implies and the dtypes the loaders accept
    /// (matrices BF16; norm weights BF16, F16 or F32; FP8 expert weights F8_E4M3 with BF16, F16 or F32 scales).
    /// </summary>
    /// <param name="Name">Name without prefix.</param>
    /// <param name="Shape">Expected dimensions.</param>
    /// <param name="IsNorm">True for RMSNorm weights (any float dtype), false for bf16 matrices.</param>
    /// <param name="Optional">True for <c>lm_head.weight</c> when embeddings are tied.</param>
    /// <param name="IsFp8">True for an FP8 expert weight (F8_E4M3); its scale is listed as a norm-like float tensor.</param>
    public readonly record struct RequiredTensor(string Name, long[] Shape, bool IsNorm, bool Optional, bool IsFp8 = false)
    {
        /// <summary>The dtypes accepted for this tensor.</summary>
        public IReadOnlyList<DType> DTypes => IsFp8 ? Fp8DTypes : IsNorm ? NormDTypes : MatrixDTypes;
    }

    /// <summary>
    /// Every tensor the Llama 4 text model of <paramref name="config"/> reads, in Hugging Face order: embeddings; per
    /// layer the two norms, q/k/v/o projections, then either the dense MLP (<c>feed_forward.gate/up/down_proj</c>) or
    /// the MoE block (router <c>[E, H]</c>, the routed experts, shared expert gate/up <c>[I, H]</c>, down <c>[H, I]</c>);
    /// the final norm; <c>lm_head</c> (optional when tied). qk-norm is a weightless L2 norm and has no tensor. Routed
    /// experts in <see cref="ExpertWeightFormat.Bf16"/>: <c>experts.gate_up_proj [E, H, 2I]</c>,
    /// <c>experts.down_proj [E, I, H]</c>; in <see cref="ExpertWeightFormat.Fp8E4M3"/> (the compressed-tensors release),
    /// per expert e in numeric order <c>experts.{e}.gate_proj|up_proj .weight [I, H]</c> and <c>down_proj.weight [H, I]</c>
    /// (F8_E4M3), each with its <c>.weight_scale [out, 1]</c>.
    /// </summary>
    public static IEnumerable<RequiredTensor> RequiredTensors(Llama4TextConfig config, ExpertWeightFormat experts = ExpertWeightFormat.Bf16)
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
                if (experts == ExpertWeightFormat.Fp8E4M3)
                {
                    for (int x = 0; x < e; x++)
                    {
                        foreach (var (projection, rows, cols) in new[] { (ExpertProjection.Gate, i, h), (ExpertProjection.Up, i, h), (ExpertProjection.Down, h, i) })
                        {
                            string module = Llama4TensorNames.ExpertProjection(l, x, projection);
                            yield return new(module + ".weight", [rows, cols], false, false, IsFp8: true);
                            yield return new(module + ".weight_scale", [rows, 1], true, false);
                        }
                    }
                }
                else
                {
                    yield return new(Llama4TensorNames.ExpertsGateUp(l), [e, h, 2 * i], false, false);
                    yield return new(Llama4TensorNames.ExpertsDown(l), [e, i, h], false, false);
                }
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

    /// <summary>
    /// Decides the routed experts' format (FP8 when the first MoE layer has no fused <c>experts.gate_up_proj</c> but
    /// expert 0's FP8 <c>gate_proj.weight</c>), cross-checks it with the quantization config, then checks every
    /// <see cref="RequiredTensors"/> entry; the first missing or mismatched one is the error.
    /// </summary>
    private void ValidateModelTensors()
    {
        int first = Config.MoeLayerIndices.DefaultIfEmpty(-1).First();
        ExpertFormat = first >= 0 && !_tensors.ContainsKey(Llama4TensorNames.ExpertsGateUp(first))
            && _tensors.ContainsKey(Llama4TensorNames.ExpertProjection(first, 0, ExpertProjection.Gate) + ".weight")
            ? ExpertWeightFormat.Fp8E4M3 : ExpertWeightFormat.Bf16;
        if (ExpertFormat == ExpertWeightFormat.Fp8E4M3 && !Quantization.IsFp8PerChannel)
        {
            throw new CheckpointException(
                $"the routed experts of the checkpoint in {Directory} are stored per expert (FP8 release layout) but config.json has no compressed-tensors quantization_config saying how to read them");
        }
        if (ExpertFormat == ExpertWeightFormat.Bf16 && Quantization.IsFp8PerChannel && first >= 0)
        {
            throw new CheckpointException(
                $"config.json in {Directory} declares a compressed-tensors FP8 quantization_config but the routed experts are fused bf16 tensors ('{TensorPrefix}{Llama4TensorNames.ExpertsGateUp(first)}')");
        }
        foreach (string module in Quantization.Ignore)
        {
            if (module.StartsWith(TensorPrefix + "model.layers.", StringComparison.Ordinal) && module.Contains(".feed_forward.experts.", StringComparison.Ordinal))
            {
                throw new CheckpointException(
                    $"config.json in {Directory}: quantization_config.ignore lists the routed expert module '{module}', which this runtime only runs in FP8");
            }
        }
        foreach (var t in RequiredTensors(Config, ExpertFormat))
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
            Check(entry, t.Shape, t.IsFp8 ? Fp8DTypes : t.IsNorm ? NormDTypes : MatrixDTypes);
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
