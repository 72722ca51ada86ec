namespace Distributed.Checkpoint;

/// <summary>
/// Hugging Face tensor names of the Llama 4 vision tower and multimodal projector (<c>Llama4VisionModel</c>,
/// <c>Llama4MultiModalProjector</c>), full names as stored (these carry no <c>language_model.</c> prefix). Shapes use the
/// <see cref="Llama4VisionConfig"/> sizes: H hidden, I intermediate, P patches per tile, K = channels · patch².
/// </summary>
public static class Llama4VisionTensorNames
{
    /// <summary>Prefix of every vision-tower tensor.</summary>
    public const string VisionPrefix = "vision_model.";
    /// <summary>Prefix of the projector's tensors.</summary>
    public const string ProjectorPrefix = "multi_modal_projector.";

    /// <summary><c>[H]</c>: the class token, appended after the patches.</summary>
    public const string ClassEmbedding = "vision_model.class_embedding";
    /// <summary><c>[P + 1, H]</c>: positional embeddings, the class token's last.</summary>
    public const string PositionalEmbedding = "vision_model.positional_embedding_vlm";
    /// <summary><c>[H, K]</c>: the unfold-convolution patch embedding (no bias).</summary>
    public const string PatchEmbedding = "vision_model.patch_embedding.linear.weight";
    /// <summary><c>[H]</c>.</summary>
    public const string PreNormWeight = "vision_model.layernorm_pre.weight";
    /// <summary><c>[H]</c>.</summary>
    public const string PreNormBias = "vision_model.layernorm_pre.bias";
    /// <summary><c>[H]</c>.</summary>
    public const string PostNormWeight = "vision_model.layernorm_post.weight";
    /// <summary><c>[H]</c>.</summary>
    public const string PostNormBias = "vision_model.layernorm_post.bias";
    /// <summary><c>[projector_input_dim, I]</c>: vision adapter fc1 (no bias).</summary>
    public const string AdapterFc1 = "vision_model.vision_adapter.mlp.fc1.weight";
    /// <summary><c>[vision_output_dim, projector_input_dim]</c>: vision adapter fc2 (no bias).</summary>
    public const string AdapterFc2 = "vision_model.vision_adapter.mlp.fc2.weight";
    /// <summary><c>[text hidden, vision_output_dim]</c>: the multimodal projector (no bias).</summary>
    public const string Projector = "multi_modal_projector.linear_1.weight";

    private static string L(int layer, string suffix) => $"vision_model.model.layers.{layer}.{suffix}";

    /// <summary>Attention projection <paramref name="proj"/> (<c>q</c>, <c>k</c>, <c>v</c> or <c>o</c>) weight <c>[H, H]</c>.</summary>
    public static string AttentionWeight(int layer, char proj) => L(layer, $"self_attn.{proj}_proj.weight");
    /// <summary>Attention projection <paramref name="proj"/> bias <c>[H]</c>.</summary>
    public static string AttentionBias(int layer, char proj) => L(layer, $"self_attn.{proj}_proj.bias");
    /// <summary><c>[I, H]</c>.</summary>
    public static string MlpFc1Weight(int layer) => L(layer, "mlp.fc1.weight");
    /// <summary><c>[I]</c>.</summary>
    public static string MlpFc1Bias(int layer) => L(layer, "mlp.fc1.bias");
    /// <summary><c>[H, I]</c>.</summary>
    public static string MlpFc2Weight(int layer) => L(layer, "mlp.fc2.weight");
    /// <summary><c>[H]</c>.</summary>
    public static string MlpFc2Bias(int layer) => L(layer, "mlp.fc2.bias");
    /// <summary><c>[H]</c>.</summary>
    public static string InputNormWeight(int layer) => L(layer, "input_layernorm.weight");
    /// <summary><c>[H]</c>.</summary>
    public static string InputNormBias(int layer) => L(layer, "input_layernorm.bias");
    /// <summary><c>[H]</c>.</summary>
    public static string PostAttentionNormWeight(int layer) => L(layer, "post_attention_layernorm.weight");
    /// <summary><c>[H]</c>.</summary>
    public static string PostAttentionNormBias(int layer) => L(layer, "post_attention_layernorm.bias");

    /// <summary>True for a tensor of the vision tower or the projector.</summary>
    public static bool IsVisionTensor(string name) =>
        name.StartsWith(VisionPrefix, StringComparison.Ordinal) || name.StartsWith(ProjectorPrefix, StringComparison.Ordinal);
}
