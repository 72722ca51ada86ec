using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.Model.Llama4.Vision;

/// <summary>
/// The vision tower and multimodal projector of a Llama 4 release, prepared on a kernel backend: the unfold patch
/// embedding, class and positional embeddings, the pre/post LayerNorms, each encoder layer (fused q/k/v with its bias,
/// o_proj, the GELU MLP, two LayerNorms), the pixel-shuffle adapter MLP and the projector. Weights are bf16 (as
/// stored); small vectors are fp32.
/// </summary>
public sealed class Llama4VisionWeights : IDisposable
{
    private readonly List<IWeightMatrix> _owned = [];

    private Llama4VisionWeights(CheckpointReader checkpoint, Llama4VisionConfig c, IKernelBackend backend)
    {
        try
        {
            Config = c;
            long h = c.HiddenSize, i = c.IntermediateSize;
            PatchEmbedding = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.PatchEmbedding, h, c.PatchInputs),
                c.PatchInputs, c.HiddenSize, WeightLayout.OutIn));
            ClassEmbedding = checkpoint.GetVisionF32(Llama4VisionTensorNames.ClassEmbedding, h);
            PositionalEmbedding = checkpoint.GetVisionF32(Llama4VisionTensorNames.PositionalEmbedding, c.TokensPerTile, h);
            PreNorm = (checkpoint.GetVisionF32(Llama4VisionTensorNames.PreNormWeight, h), checkpoint.GetVisionF32(Llama4VisionTensorNames.PreNormBias, h));
            PostNorm = (checkpoint.GetVisionF32(Llama4VisionTensorNames.PostNormWeight, h), checkpoint.GetVisionF32(Llama4VisionTensorNames.PostNormBias, h));
            Layers = new Llama4VisionLayerWeights[c.NumLayers];
            for (int l = 0; l < c.NumLayers; l++)
            {
                // One fused [H, 3H] matmul for q, k and v: rows of OutIn weights concatenate, and so do their biases.
                var qkv = new ushort[3 * h * h];
                var qkvBias = new float[3 * h];
                int part = 0;
                foreach (char p in "qkv")
                {
                    checkpoint.GetVisionBf16(Llama4VisionTensorNames.AttentionWeight(l, p), h, h).CopyTo(qkv.AsSpan((int)(part * h * h)));
                    checkpoint.GetVisionF32(Llama4VisionTensorNames.AttentionBias(l, p), h).CopyTo(qkvBias.AsSpan((int)(part * h)));
                    part++;
                }
                Layers[l] = new Llama4VisionLayerWeights
                {
                    InputNorm = (checkpoint.GetVisionF32(Llama4VisionTensorNames.InputNormWeight(l), h), checkpoint.GetVisionF32(Llama4VisionTensorNames.InputNormBias(l), h)),
                    PostAttentionNorm = (checkpoint.GetVisionF32(Llama4VisionTensorNames.PostAttentionNormWeight(l), h),
                        checkpoint.GetVisionF32(Llama4VisionTensorNames.PostAttentionNormBias(l), h)),
                    Qkv = Own(backend.CreateWeight(qkv, c.HiddenSize, 3 * c.HiddenSize, WeightLayout.OutIn)),
                    QkvBias = qkvBias,
                    O = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.AttentionWeight(l, 'o'), h, h), c.HiddenSize, c.HiddenSize, WeightLayout.OutIn)),
                    OBias = checkpoint.GetVisionF32(Llama4VisionTensorNames.AttentionBias(l, 'o'), h),
                    Fc1 = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.MlpFc1Weight(l), i, h), c.HiddenSize, c.IntermediateSize, WeightLayout.OutIn)),
                    Fc1Bias = checkpoint.GetVisionF32(Llama4VisionTensorNames.MlpFc1Bias(l), i),
                    Fc2 = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.MlpFc2Weight(l), h, i), c.IntermediateSize, c.HiddenSize, WeightLayout.OutIn)),
                    Fc2Bias = checkpoint.GetVisionF32(Llama4VisionTensorNames.MlpFc2Bias(l), h),
                };
            }
            AdapterFc1 = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.AdapterFc1, c.ProjectorInputDim, i),
                c.IntermediateSize, c.ProjectorInputDim, WeightLayout.OutIn));
            AdapterFc2 = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.AdapterFc2, c.VisionOutputDim, c.ProjectorInputDim),
                c.ProjectorInputDim, c.VisionOutputDim, WeightLayout.OutIn));
            Projector = Own(backend.CreateWeight(checkpoint.GetVisionBf16(Llama4VisionTensorNames.Projector, c.TextHiddenSize, c.VisionOutputDim),
                c.VisionOutputDim, c.TextHiddenSize, WeightLayout.OutIn));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The validated vision config.</summary>
    public Llama4VisionConfig Config { get; }

    /// <summary>Unfold patch embedding <c>[channels·patch² → hidden]</c> (no bias).</summary>
    public IWeightMatrix PatchEmbedding { get; }

    /// <summary><c>[hidden]</c>.</summary>
    public float[] ClassEmbedding { get; }

    /// <summary><c>[patches + 1, hidden]</c>, the class token's row last.</summary>
    public float[] PositionalEmbedding { get; }

    /// <summary><c>layernorm_pre</c> weight and bias.</summary>
    public (float[] Weight, float[] Bias) PreNorm { get; }

    /// <summary><c>layernorm_post</c> weight and bias.</summary>
    public (float[] Weight, float[] Bias) PostNorm { get; }

    /// <summary>Per encoder layer.</summary>
    public Llama4VisionLayerWeights[] Layers { get; }

    /// <summary>Vision adapter fc1 <c>[intermediate → projector_input_dim]</c> (no bias).</summary>
    public IWeightMatrix AdapterFc1 { get; }

    /// <summary>Vision adapter fc2 <c>[projector_input_dim → vision_output_dim]</c> (no bias).</summary>
    public IWeightMatrix AdapterFc2 { get; }

    /// <summary>Multimodal projector <c>[vision_output_dim → text hidden]</c> (no bias).</summary>
    public IWeightMatrix Projector { get; }

    /// <summary>Backend memory held by these weights.</summary>
    public long ResidentBytes => _owned.Sum(w => w.ResidentBytes);

    /// <summary>
    /// Loads the vision tower of <paramref name="checkpoint"/>, or returns null when it has none
    /// (<see cref="CheckpointReader.VisionConfig"/> null).
    /// </summary>
    /// <exception cref="CheckpointException">A tensor is missing or has the wrong shape or dtype.</exception>
    public static Llama4VisionWeights? Load(CheckpointReader checkpoint, IKernelBackend backend)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        if (checkpoint.VisionConfig is not { } config)
        {
            return null;
        }
        return new Llama4VisionWeights(checkpoint, config, backend);
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
}

/// <summary>One vision encoder layer's weights.</summary>
public sealed class Llama4VisionLayerWeights
{
    /// <summary><c>input_layernorm</c> weight and bias <c>[hidden]</c>.</summary>
    public required (float[] Weight, float[] Bias) InputNorm { get; init; }
    /// <summary><c>post_attention_layernorm</c> weight and bias <c>[hidden]</c>.</summary>
    public required (float[] Weight, float[] Bias) PostAttentionNorm { get; init; }
    /// <summary>Fused q/k/v <c>[hidden → 3·hidden]</c>, q columns first.</summary>
    public required IWeightMatrix Qkv { get; init; }
    /// <summary>q, k and v biases concatenated <c>[3·hidden]</c>.</summary>
    public required float[] QkvBias { get; init; }
    /// <summary><c>o_proj</c> <c>[hidden → hidden]</c>.</summary>
    public required IWeightMatrix O { get; init; }
    /// <summary><c>o_proj</c> bias.</summary>
    public required float[] OBias { get; init; }
    /// <summary>MLP fc1 <c>[hidden → intermediate]</c>.</summary>
    public required IWeightMatrix Fc1 { get; init; }
    /// <summary>MLP fc1 bias.</summary>
    public required float[] Fc1Bias { get; init; }
    /// <summary>MLP fc2 <c>[intermediate → hidden]</c>.</summary>
    public required IWeightMatrix Fc2 { get; init; }
    /// <summary>MLP fc2 bias.</summary>
    public required float[] Fc2Bias { get; init; }
}
