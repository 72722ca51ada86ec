using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// The coordinator's share of a Llama 4 text checkpoint: embeddings, attention, norms, dense MLPs, routers, shared
/// experts and lm_head, prepared on a kernel backend. Routed experts are NOT loaded here (they belong to whoever
/// serves them through <see cref="Moe.IExpertDispatcher"/>).
/// </summary>
public sealed class Llama4Weights : IDisposable
{
    private readonly CheckpointReader _checkpoint;
    private readonly List<IWeightMatrix> _owned = [];

    private Llama4Weights(CheckpointReader checkpoint, IKernelBackend backend)
    {
        _checkpoint = checkpoint;
        Config = checkpoint.Config;
        var c = Config;
        long h = c.HiddenSize, hd = c.HeadDim, nh = c.NumHeads, nkv = c.NumKvHeads, v = c.VocabSize;

        // [vocab, hidden] bf16, read row by row from the memory map (never copied whole: 2 GB for Maverick).
        _ = checkpoint.GetBf16(Llama4TensorNames.Embeddings, v, h);
        FinalNorm = checkpoint.GetF32(Llama4TensorNames.FinalNorm, h);
        LmHead = Own(c.TieWordEmbeddings
            ? backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.Embeddings, v, h), (int)h, (int)v, WeightLayout.OutIn)
            : backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.LmHead, v, h), (int)h, (int)v, WeightLayout.OutIn));

        Layers = new Llama4LayerWeights[c.NumLayers];
        for (int il = 0; il < c.NumLayers; il++)
        {
            var q = checkpoint.GetBf16(Llama4TensorNames.QProj(il), nh * hd, h);
            var k = checkpoint.GetBf16(Llama4TensorNames.KProj(il), nkv * hd, h);
            var vv = checkpoint.GetBf16(Llama4TensorNames.VProj(il), nkv * hd, h);
            // One fused [H, (nh + 2 nkv) hd] matmul instead of three: rows of OutIn weights simply concatenate.
            var qkvBits = Concat(q, k, vv);
            var layer = new Llama4LayerWeights
            {
                InputNorm = checkpoint.GetF32(Llama4TensorNames.InputNorm(il), h),
                PostAttentionNorm = checkpoint.GetF32(Llama4TensorNames.PostAttentionNorm(il), h),
                Qkv = Own(backend.CreateWeight(qkvBits, (int)h, (int)((nh + 2 * nkv) * hd), WeightLayout.OutIn)),
                O = Own(backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.OProj(il), h, nh * hd), (int)(nh * hd), (int)h, WeightLayout.OutIn)),
            };
            if (c.IsMoeLayer(il))
            {
                long e = c.NumExperts, i = c.IntermediateSize;
                layer.Router = Own(backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.Router(il), e, h), (int)h, (int)e, WeightLayout.OutIn));
                var gate = checkpoint.GetBf16(Llama4TensorNames.SharedGate(il), i, h);
                var up = checkpoint.GetBf16(Llama4TensorNames.SharedUp(il), i, h);
                layer.FfnGateUp = Own(backend.CreateWeight(Concat(gate, up), (int)h, (int)(2 * i), WeightLayout.OutIn));
                layer.FfnDown = Own(backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.SharedDown(il), h, i), (int)i, (int)h, WeightLayout.OutIn));
                // The routed experts must exist with the right shapes even though another process may serve them (the
                // FP8 release's per-expert tensors are checked by CheckpointReader.Open).
                if (checkpoint.ExpertFormat == Protocol.Contracts.ExpertWeightFormat.Bf16
                    && (!checkpoint.TryGetInfo(Llama4TensorNames.ExpertsGateUp(il), out _) || !checkpoint.TryGetInfo(Llama4TensorNames.ExpertsDown(il), out _)))
                {
                    throw new CheckpointException($"MoE layer {il}: fused expert tensors are missing");
                }
            }
            else
            {
                long i = c.IntermediateSizeMlp;
                var gate = checkpoint.GetBf16(Llama4TensorNames.MlpGate(il), i, h);
                var up = checkpoint.GetBf16(Llama4TensorNames.MlpUp(il), i, h);
                layer.FfnGateUp = Own(backend.CreateWeight(Concat(gate, up), (int)h, (int)(2 * i), WeightLayout.OutIn));
                layer.FfnDown = Own(backend.CreateWeight(checkpoint.GetBf16(Llama4TensorNames.MlpDown(il), h, i), (int)i, (int)h, WeightLayout.OutIn));
            }
            Layers[il] = layer;
        }
        Rope = RopeTable.Create(c.HeadDim, c.RopeTheta, c.RopeScaling);
    }

    /// <summary>The validated text config.</summary>
    public Llama4TextConfig Config { get; }

    /// <summary>Per decoder layer.</summary>
    public Llama4LayerWeights[] Layers { get; }

    /// <summary>Final RMSNorm weight <c>[hidden]</c>.</summary>
    public float[] FinalNorm { get; }

    /// <summary><c>[hidden → vocab]</c>.</summary>
    public IWeightMatrix LmHead { get; }

    /// <summary>Rotary inverse frequencies (llama3 scaling applied when configured).</summary>
    public RopeTable Rope { get; }

    /// <summary>Backend memory held by these weights.</summary>
    public long ResidentBytes => _owned.Sum(w => w.ResidentBytes);

    /// <summary>Loads the non-expert weights of <paramref name="checkpoint"/> (which must outlive this object).</summary>
    /// <exception cref="CheckpointException">A tensor is missing or has the wrong shape or dtype.</exception>
    public static Llama4Weights Load(CheckpointReader checkpoint, IKernelBackend backend)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        return new Llama4Weights(checkpoint, backend);
    }

    /// <summary>Writes the embedding of <paramref name="token"/> (bf16 widened exactly) into <paramref name="dst"/>.</summary>
    public void Embed(int token, Span<float> dst)
    {
        int h = Config.HiddenSize;
        if ((uint)token >= (uint)Config.VocabSize)
        {
            throw new ArgumentOutOfRangeException(nameof(token), token, $"token id outside the vocabulary [0, {Config.VocabSize})");
        }
        var row = _checkpoint.GetBf16(Llama4TensorNames.Embeddings, Config.VocabSize, h).Slice(token * h, h);
        for (int j = 0; j < h; j++)
        {
            dst[j] = DTypeInfo.Bf16ToFloat(row[j]);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var w in _owned)
        {
            w.Dispose();
        }
        _owned.Clear();
    }

    private IWeightMatrix Own(IWeightMatrix w)
    {
        _owned.Add(w);
        return w;
    }

    private static ushort[] Concat(ReadOnlySpan<ushort> a, ReadOnlySpan<ushort> b)
    {
        var all = new ushort[a.Length + b.Length];
        a.CopyTo(all);
        b.CopyTo(all.AsSpan(a.Length));
        return all;
    }

    private static ushort[] Concat(ReadOnlySpan<ushort> a, ReadOnlySpan<ushort> b, ReadOnlySpan<ushort> c)
    {
        var all = new ushort[a.Length + b.Length + c.Length];
        a.CopyTo(all);
        b.CopyTo(all.AsSpan(a.Length));
        c.CopyTo(all.AsSpan(a.Length + b.Length));
        return all;
    }
}

/// <summary>One decoder layer's coordinator-side weights.</summary>
public sealed class Llama4LayerWeights
{
    /// <summary><c>input_layernorm.weight</c> <c>[hidden]</c>.</summary>
    public required float[] InputNorm { get; init; }
    /// <summary><c>post_attention_layernorm.weight</c> <c>[hidden]</c>.</summary>
    public required float[] PostAttentionNorm { get; init; }
    /// <summary>Fused q/k/v projection <c>[hidden → (heads + 2·kv_heads)·head_dim]</c>, q columns first, then k, then v.</summary>
    public required IWeightMatrix Qkv { get; init; }
    /// <summary><c>o_proj</c> <c>[heads·head_dim → hidden]</c>.</summary>
    public required IWeightMatrix O { get; init; }
    /// <summary>Dense MLP (or, on MoE layers, the shared expert) gate+up <c>[hidden → 2·I]</c>, gate columns first.</summary>
    public IWeightMatrix FfnGateUp { get; set; } = null!;
    /// <summary>Dense MLP (or shared expert) down <c>[I → hidden]</c>.</summary>
    public IWeightMatrix FfnDown { get; set; } = null!;
    /// <summary>Router <c>[hidden → experts]</c> on MoE layers, else null.</summary>
    public IWeightMatrix? Router { get; set; }
}
