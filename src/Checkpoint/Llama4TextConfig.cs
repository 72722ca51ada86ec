namespace Distributed.Checkpoint;

/// <summary>
/// The fields of a Hugging Face <c>Llama4TextConfig</c> (<c>model_type: llama4_text</c>, or the <c>text_config</c> of a
/// multimodal <c>llama4</c> release) that change the math, validated. Derived per-layer facts follow HF exactly
/// (configuration_llama4.py / modeling_llama4.py at transformers ccc7d90).
/// </summary>
public sealed record Llama4TextConfig
{
    /// <summary><c>hidden_size</c>.</summary>
    public required int HiddenSize { get; init; }
    /// <summary><c>num_hidden_layers</c>.</summary>
    public required int NumLayers { get; init; }
    /// <summary><c>num_attention_heads</c>.</summary>
    public required int NumHeads { get; init; }
    /// <summary><c>num_key_value_heads</c>.</summary>
    public required int NumKvHeads { get; init; }
    /// <summary><c>head_dim</c> (default hidden / heads).</summary>
    public required int HeadDim { get; init; }
    /// <summary><c>intermediate_size</c>: width of each routed expert and of the shared expert.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary><c>intermediate_size_mlp</c>: width of the dense (non-MoE) MLP layers.</summary>
    public required int IntermediateSizeMlp { get; init; }
    /// <summary><c>num_local_experts</c>.</summary>
    public required int NumExperts { get; init; }
    /// <summary><c>num_experts_per_tok</c> (top-k).</summary>
    public required int TopK { get; init; }
    /// <summary><c>moe_layers</c> as HF derives it (explicit list, else every <c>interleave_moe_layer_step</c>-th layer).</summary>
    public required IReadOnlyList<int> MoeLayers { get; init; }
    /// <summary>
    /// <c>interleave_moe_layer_step</c> as written in the config (default 1). Informational once
    /// <see cref="MoeLayers"/> is derived; kept so a config can be written back unchanged.
    /// </summary>
    public int InterleaveMoeLayerStep { get; init; } = 1;
    /// <summary><c>no_rope_layers</c>: 1 = the layer USES RoPE (chunked attention), 0 = NoPE (full attention).</summary>
    public required IReadOnlyList<int> NoRopeLayers { get; init; }
    /// <summary><c>attention_chunk_size</c>.</summary>
    public required int AttentionChunkSize { get; init; }
    /// <summary><c>use_qk_norm</c> (L2 norm of q and k on RoPE layers, after RoPE).</summary>
    public required bool UseQkNorm { get; init; }
    /// <summary><c>attn_temperature_tuning</c> (truthiness, as HF tests it).</summary>
    public required bool AttnTemperatureTuning { get; init; }
    /// <summary><c>floor_scale</c>.</summary>
    public required double FloorScale { get; init; }
    /// <summary><c>attn_scale</c>.</summary>
    public required double AttnScale { get; init; }
    /// <summary><c>rope_theta</c>.</summary>
    public required double RopeTheta { get; init; }
    /// <summary><c>rope_scaling</c> of type llama3, or null.</summary>
    public required Llama3RopeScaling? RopeScaling { get; init; }
    /// <summary><c>rms_norm_eps</c>.</summary>
    public required double RmsNormEps { get; init; }
    /// <summary><c>vocab_size</c>.</summary>
    public required int VocabSize { get; init; }
    /// <summary><c>max_position_embeddings</c>.</summary>
    public required int MaxPositionEmbeddings { get; init; }
    /// <summary><c>tie_word_embeddings</c>.</summary>
    public required bool TieWordEmbeddings { get; init; }
    /// <summary><c>bos_token_id</c>, or -1.</summary>
    public int BosTokenId { get; init; } = -1;
    /// <summary><c>eos_token_id</c> (int or list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary><c>pad_token_id</c>, or -1.</summary>
    public int PadTokenId { get; init; } = -1;

    /// <summary>True when layer <paramref name="layer"/> is a MoE layer.</summary>
    public bool IsMoeLayer(int layer) => MoeLayers.Contains(layer);

    /// <summary>True when layer <paramref name="layer"/> uses RoPE (and therefore chunked attention and qk-norm if enabled).</summary>
    public bool UsesRope(int layer) => NoRopeLayers[layer] != 0;

    /// <summary>The MoE layers in ascending order.</summary>
    public IEnumerable<int> MoeLayerIndices => MoeLayers.Order();
}
