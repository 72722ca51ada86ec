namespace Distributed.Checkpoint;

/// <summary>Hugging Face tensor names of the Llama 4 text model (without the multimodal <c>language_model.</c> prefix).</summary>
public static class Llama4TensorNames
{
    /// <summary><c>[vocab, hidden]</c>.</summary>
    public const string Embeddings = "model.embed_tokens.weight";
    /// <summary><c>[hidden]</c>.</summary>
    public const string FinalNorm = "model.norm.weight";
    /// <summary><c>[vocab, hidden]</c> (absent when embeddings are tied).</summary>
    public const string LmHead = "lm_head.weight";

    private static string L(int layer, string suffix) => $"model.layers.{layer}.{suffix}";

    /// <summary><c>[hidden]</c>.</summary>
    public static string InputNorm(int layer) => L(layer, "input_layernorm.weight");
    /// <summary><c>[hidden]</c>.</summary>
    public static string PostAttentionNorm(int layer) => L(layer, "post_attention_layernorm.weight");
    /// <summary><c>[heads·head_dim, hidden]</c>.</summary>
    public static string QProj(int layer) => L(layer, "self_attn.q_proj.weight");
    /// <summary><c>[kv_heads·head_dim, hidden]</c>.</summary>
    public static string KProj(int layer) => L(layer, "self_attn.k_proj.weight");
    /// <summary><c>[kv_heads·head_dim, hidden]</c>.</summary>
    public static string VProj(int layer) => L(layer, "self_attn.v_proj.weight");
    /// <summary><c>[hidden, heads·head_dim]</c>.</summary>
    public static string OProj(int layer) => L(layer, "self_attn.o_proj.weight");
    /// <summary>Dense MLP <c>[intermediate_size_mlp, hidden]</c>.</summary>
    public static string MlpGate(int layer) => L(layer, "feed_forward.gate_proj.weight");
    /// <summary>Dense MLP <c>[intermediate_size_mlp, hidden]</c>.</summary>
    public static string MlpUp(int layer) => L(layer, "feed_forward.up_proj.weight");
    /// <summary>Dense MLP <c>[hidden, intermediate_size_mlp]</c>.</summary>
    public static string MlpDown(int layer) => L(layer, "feed_forward.down_proj.weight");
    /// <summary>Router <c>[experts, hidden]</c>.</summary>
    public static string Router(int layer) => L(layer, "feed_forward.router.weight");
    /// <summary>Fused routed experts <c>[E, hidden, 2·intermediate]</c>, gate half first.</summary>
    public static string ExpertsGateUp(int layer) => L(layer, "feed_forward.experts.gate_up_proj");
    /// <summary>Fused routed experts <c>[E, intermediate, hidden]</c>.</summary>
    public static string ExpertsDown(int layer) => L(layer, "feed_forward.experts.down_proj");
    /// <summary>
    /// FP8 release (compressed-tensors): routed expert <paramref name="expert"/>'s projection module, one Linear per expert
    /// and projection; append <c>.weight</c> (F8_E4M3 <c>[out, in]</c>) or <c>.weight_scale</c> (<c>[out, 1]</c>).
    /// </summary>
    public static string ExpertProjection(int layer, int expert, ExpertProjection projection) => L(layer, $"feed_forward.experts.{expert}.{projection switch
    {
        Checkpoint.ExpertProjection.Gate => "gate_proj",
        Checkpoint.ExpertProjection.Up => "up_proj",
        Checkpoint.ExpertProjection.Down => "down_proj",
        _ => throw new ArgumentOutOfRangeException(nameof(projection), projection, "unknown expert projection"),
    }}");

    /// <summary>Shared expert <c>[intermediate, hidden]</c>.</summary>
    public static string SharedGate(int layer) => L(layer, "feed_forward.shared_expert.gate_proj.weight");
    /// <summary>Shared expert <c>[intermediate, hidden]</c>.</summary>
    public static string SharedUp(int layer) => L(layer, "feed_forward.shared_expert.up_proj.weight");
    /// <summary>Shared expert <c>[hidden, intermediate]</c>.</summary>
    public static string SharedDown(int layer) => L(layer, "feed_forward.shared_expert.down_proj.weight");
}

/// <summary>The three projections of one routed expert (unfused in the FP8 release).</summary>
public enum ExpertProjection
{
    /// <summary><c>gate_proj</c>: <c>[intermediate, hidden]</c>.</summary>
    Gate = 0,
    /// <summary><c>up_proj</c>: <c>[intermediate, hidden]</c>.</summary>
    Up = 1,
    /// <summary><c>down_proj</c>: <c>[hidden, intermediate]</c>.</summary>
    Down = 2,
}
