using System.Text;
using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>
/// Reads a Hugging Face Llama 4 <c>config.json</c> into a validated <see cref="Llama4TextConfig"/> and writes one back.
/// Accepted layouts: <c>model_type: "llama4_text"</c> at the top level (tensor prefix <c>""</c>), or the multimodal
/// <c>model_type: "llama4"</c> with a nested <c>text_config</c> object (tensor prefix <c>"language_model."</c>).
/// <para>
/// Required fields (no default is trusted for the shape of the weights): <c>hidden_size</c>, <c>num_hidden_layers</c>,
/// <c>num_attention_heads</c>, <c>intermediate_size</c>, <c>intermediate_size_mlp</c>, <c>num_local_experts</c>,
/// <c>num_experts_per_tok</c>, <c>vocab_size</c>. Other fields take the defaults of transformers'
/// <c>Llama4TextConfig</c>, and derived fields follow its <c>__init__</c>:
/// <c>num_key_value_heads</c> = heads when absent; <c>head_dim</c> = hidden // heads when absent;
/// <c>moe_layers</c> = <c>list(range(step − 1, layers, step))</c> with <c>step = interleave_moe_layer_step</c> (default 1)
/// when absent; <c>no_rope_layers</c> = <c>[int((i + 1) % no_rope_layer_interval != 0) for i in range(layers)]</c>
/// (interval default 4) when absent or empty; <c>attention_chunk_size</c> 8192; <c>use_qk_norm</c> true;
/// <c>attn_temperature_tuning</c> true (a number counts by truthiness, as HF tests it); <c>floor_scale</c> 8192;
/// <c>attn_scale</c> 0.1; <c>rope_theta</c> 500000; <c>rope_scaling</c> null; <c>rms_norm_eps</c> 1e-5;
/// <c>max_position_embeddings</c> 131072; <c>tie_word_embeddings</c> false; token ids absent (-1 / empty).
/// </para>
/// <para>
/// Rejected (with the field named): wrong JSON types, non-positive sizes, <c>heads % kv_heads != 0</c>, odd
/// <c>head_dim</c> (rotary pairs), <c>no_rope_layers</c> whose length is not <c>num_hidden_layers</c> or with values other
/// than 0/1, MoE layer indices out of range or repeated, top-k above the expert count, <c>hidden_act</c> other than
/// <c>silu</c>, <c>attention_bias: true</c> (unsupported), <c>rope_scaling</c> types other than <c>llama3</c>, and
/// duplicate keys. Unknown extra fields are ignored.
/// </para>
/// </summary>
public static class Llama4ConfigParser
{
    /// <summary>Tensor-name prefix of the text model in the multimodal (<c>llama4</c>) layout.</summary>
    public const string MultimodalTensorPrefix = "language_model.";

    /// <summary>Parses and validates <paramref name="json"/>; <paramref name="sourceName"/> starts every error message.</summary>
    /// <exception cref="CheckpointException">Malformed JSON or an invalid field (the message names it).</exception>
    public static Llama4TextConfig Parse(string json, string sourceName) => Parse(json, sourceName, out _);

    /// <summary>
    /// Parses and validates <paramref name="json"/> and reports the tensor prefix of its layout
    /// (<c>""</c> or <see cref="MultimodalTensorPrefix"/>).
    /// </summary>
    /// <exception cref="CheckpointException">Malformed JSON or an invalid field (the message names it).</exception>
    public static Llama4TextConfig Parse(string json, string sourceName, out string tensorPrefix)
    {
        ArgumentNullException.ThrowIfNull(json);
        ArgumentException.ThrowIfNullOrEmpty(sourceName);
        using (var doc = JsonFields.ParseDocument(json, sourceName, 32))
        {
            var top = JsonFields.Of(doc.RootElement, sourceName, "", "the top level");
            string? modelType = top.OptionalString("model_type");
            switch (modelType)
            {
                case "llama4_text":
                    tensorPrefix = "";
                    return ParseText(top, topLevelTie: null);
                case "llama4":
                    if (!top.TryGet("text_config", out var textEl))
                    {
                        throw top.Missing("text_config", "the multimodal 'llama4' layout nests the text model's config there");
                    }
                    var text = JsonFields.Of(textEl, sourceName, "text_config.", "field 'text_config'");
                    string? innerType = text.OptionalString("model_type");
                    if (innerType is not null and not "llama4_text")
                    {
                        throw text.Error("model_type", "\"llama4_text\"", textEl.GetProperty("model_type"));
                    }
                    bool? topTie = top.Has("tie_word_embeddings") ? top.OptionalBool("tie_word_embeddings", false) : null;
                    tensorPrefix = MultimodalTensorPrefix;
                    return ParseText(text, topTie);
                case null:
                    throw top.Missing("model_type", "expected \"llama4_text\" or \"llama4\"");
                default:
                    throw new CheckpointException(
                        $"{sourceName}: field 'model_type' is \"{modelType}\"; only Llama 4 (\"llama4_text\" or \"llama4\") is supported");
            }
        }
    }

    private static Llama4TextConfig ParseText(JsonFields f, bool? topLevelTie)
    {
        int hidden = f.RequiredPositiveInt("hidden_size");
        int layers = f.RequiredPositiveInt("num_hidden_layers");
        int heads = f.RequiredPositiveInt("num_attention_heads");
        int kvHeads = f.OptionalPositiveInt("num_key_value_heads", heads);
        if (heads % kvHeads != 0)
        {
            throw new CheckpointException(
                $"{f.Source}: field '{f.Name("num_key_value_heads")}' ({kvHeads}) must divide '{f.Name("num_attention_heads")}' ({heads})");
        }
        int headDim;
        if (f.Has("head_dim"))
        {
            headDim = f.RequiredPositiveInt("head_dim");
        }
        else
        {
            headDim = hidden / heads;
            if (headDim <= 0)
            {
                throw new CheckpointException(
                    $"{f.Source}: field '{f.Name("head_dim")}' is absent and hidden_size // num_attention_heads = 0");
            }
        }
        if (headDim % 2 != 0)
        {
            throw f.Error("head_dim", $"even (rotary embeddings rotate pairs), got {headDim}");
        }
        if ((long)heads * headDim > int.MaxValue)
        {
            throw f.Error("head_dim", $"small enough that num_attention_heads x head_dim fits in 32 bits, got {heads} x {headDim}");
        }

        int intermediate = f.RequiredPositiveInt("intermediate_size");
        int intermediateMlp = f.RequiredPositiveInt("intermediate_size_mlp");
        if (intermediate > int.MaxValue / 2)
        {
            throw f.Error("intermediate_size", $"at most {int.MaxValue / 2} (the fused gate_up tensor is 2 x intermediate_size wide)");
        }
        int experts = f.RequiredPositiveInt("num_local_experts");
        int topK = f.RequiredPositiveInt("num_experts_per_tok");
        if (topK > experts)
        {
            throw new CheckpointException(
                $"{f.Source}: field '{f.Name("num_experts_per_tok")}' ({topK}) must not exceed '{f.Name("num_local_experts")}' ({experts})");
        }
        int vocab = f.RequiredPositiveInt("vocab_size");

        int step = f.OptionalPositiveInt("interleave_moe_layer_step", 1);
        int[] moeLayers = f.OptionalIntArray("moe_layers", minValue: 0)
            ?? Enumerable.Range(0, layers).Where(i => i >= step - 1 && (i - (step - 1)) % step == 0).ToArray();
        var seenMoe = new HashSet<int>();
        for (int i = 0; i < moeLayers.Length; i++)
        {
            if (moeLayers[i] >= layers)
            {
                throw new CheckpointException(
                    $"{f.Source}: field '{f.Name("moe_layers")}[{i}]' ({moeLayers[i]}) is not a layer index in [0, {layers})");
            }
            if (!seenMoe.Add(moeLayers[i]))
            {
                throw new CheckpointException($"{f.Source}: field '{f.Name("moe_layers")}' lists layer {moeLayers[i]} twice");
            }
        }

        int interval = f.OptionalPositiveInt("no_rope_layer_interval", 4);
        int[]? noRope = f.OptionalIntArray("no_rope_layers", minValue: 0);
        if (noRope is null || noRope.Length == 0)
        {
            // HF: `self.no_rope_layers if self.no_rope_layers else default_no_rope_layers` (an empty list is falsy).
            noRope = Enumerable.Range(0, layers).Select(i => (i + 1) % interval != 0 ? 1 : 0).ToArray();
        }
        else
        {
            if (noRope.Length != layers)
            {
                throw f.Error("no_rope_layers", $"a list of num_hidden_layers ({layers}) entries, got {noRope.Length}");
            }
            for (int i = 0; i < noRope.Length; i++)
            {
                if (noRope[i] > 1)
                {
                    throw new CheckpointException(
                        $"{f.Source}: field '{f.Name("no_rope_layers")}[{i}]' must be 0 (NoPE) or 1 (RoPE), got {noRope[i]}");
                }
            }
        }

        int chunk = 8192;
        if (f.IsPresent("attention_chunk_size"))
        {
            if (!f.TryGet("attention_chunk_size", out var chunkEl))
            {
                throw f.Error("attention_chunk_size", "a positive integer (null, i.e. unchunked attention, is not supported)");
            }
            chunk = f.PositiveInt("attention_chunk_size", chunkEl);
        }

        bool tuning = true;
        if (f.TryGet("attn_temperature_tuning", out var tuningEl))
        {
            tuning = tuningEl.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                JsonValueKind.Number when tuningEl.TryGetDouble(out double x) && double.IsFinite(x) => x != 0,
                _ => throw f.Error("attn_temperature_tuning", "a boolean or a number (tested for truthiness)", tuningEl),
            };
        }

        string? act = f.OptionalString("hidden_act");
        if (act is not null and not "silu")
        {
            throw new CheckpointException(
                $"{f.Source}: field '{f.Name("hidden_act")}' is \"{act}\"; only \"silu\" (SwiGLU) is supported");
        }
        if (f.OptionalBool("attention_bias", false))
        {
            throw new CheckpointException(
                $"{f.Source}: field '{f.Name("attention_bias")}' is true; attention projection biases are not supported (Llama 4 has none)");
        }

        bool tie = f.Has("tie_word_embeddings") ? f.OptionalBool("tie_word_embeddings", false) : topLevelTie ?? false;

        return new Llama4TextConfig
        {
            HiddenSize = hidden,
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            IntermediateSize = intermediate,
            IntermediateSizeMlp = intermediateMlp,
            NumExperts = experts,
            TopK = topK,
            InterleaveMoeLayerStep = step,
            MoeLayers = moeLayers,
            NoRopeLayers = noRope,
            AttentionChunkSize = chunk,
            UseQkNorm = f.OptionalBool("use_qk_norm", true),
            AttnTemperatureTuning = tuning,
            FloorScale = f.OptionalPositiveNumber("floor_scale", 8192),
            AttnScale = f.OptionalFiniteNumber("attn_scale", 0.1),
            RopeTheta = f.OptionalPositiveNumber("rope_theta", 500000.0),
            RopeScaling = ParseRopeScaling(f),
            RmsNormEps = f.OptionalPositiveNumber("rms_norm_eps", 1e-5),
            VocabSize = vocab,
            MaxPositionEmbeddings = f.OptionalPositiveInt("max_position_embeddings", 4096 * 32),
            TieWordEmbeddings = tie,
            BosTokenId = f.OptionalNonNegativeInt("bos_token_id", -1),
            PadTokenId = f.OptionalNonNegativeInt("pad_token_id", -1),
            EosTokenIds = ParseEos(f),
        };
    }

    private static Llama3RopeScaling? ParseRopeScaling(JsonFields f)
    {
        if (!f.TryGet("rope_scaling", out var el))
        {
            return null;
        }
        var r = JsonFields.Of(el, f.Source, f.Name("rope_scaling") + ".", $"field '{f.Name("rope_scaling")}'");
        string? type = r.OptionalString("rope_type") ?? r.OptionalString("type");
        if (type is null)
        {
            throw r.Missing("rope_type", "\"llama3\"");
        }
        if (type == "default")
        {
            return null;
        }
        if (type != "llama3")
        {
            throw new CheckpointException(
                $"{f.Source}: field '{r.Name("rope_type")}' is \"{type}\"; only \"llama3\" rope scaling (or null) is supported");
        }
        double Required(string name)
        {
            if (!r.TryGet(name, out var v))
            {
                throw r.Missing(name, "a positive number");
            }
            return r.PositiveNumber(name, v);
        }
        double factor = Required("factor");
        double low = Required("low_freq_factor");
        double high = Required("high_freq_factor");
        int original = r.RequiredPositiveInt("original_max_position_embeddings");
        return new Llama3RopeScaling(factor, low, high, original);
    }

    private static IReadOnlyList<int> ParseEos(JsonFields f)
    {
        if (!f.TryGet("eos_token_id", out var el))
        {
            return [];
        }
        if (el.ValueKind == JsonValueKind.Number)
        {
            return [f.OptionalNonNegativeInt("eos_token_id", -1)];
        }
        if (el.ValueKind == JsonValueKind.Array)
        {
            return f.OptionalIntArray("eos_token_id", minValue: 0)!;
        }
        throw f.Error("eos_token_id", "a non-negative integer or a list of them", el);
    }

    /// <summary>
    /// Writes <paramref name="config"/> as a Hugging Face <c>config.json</c> for <c>Llama4ForCausalLM</c>
    /// (<c>model_type: "llama4_text"</c>, keys sorted, two-space indent, every derived field explicit). The output is
    /// canonical: equal configs give identical text, and <see cref="Parse(string, string)"/> reads it back equal.
    /// </summary>
    public static string ToJson(Llama4TextConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue("Llama4ForCausalLM");
            w.WriteEndArray();
            w.WriteBoolean("attention_bias", false);
            w.WriteNumber("attention_chunk_size", config.AttentionChunkSize);
            w.WriteNumber("attention_dropout", 0.0);
            w.WriteNumber("attn_scale", config.AttnScale);
            w.WriteBoolean("attn_temperature_tuning", config.AttnTemperatureTuning);
            WriteTokenId(w, "bos_token_id", config.BosTokenId);
            w.WritePropertyName("eos_token_id");
            if (config.EosTokenIds.Count == 0)
            {
                w.WriteNullValue();
            }
            else
            {
                WriteIntArray(w, config.EosTokenIds);
            }
            w.WriteNumber("floor_scale", config.FloorScale);
            w.WriteNumber("head_dim", config.HeadDim);
            w.WriteString("hidden_act", "silu");
            w.WriteNumber("hidden_size", config.HiddenSize);
            w.WriteNumber("interleave_moe_layer_step", config.InterleaveMoeLayerStep);
            w.WriteNumber("intermediate_size", config.IntermediateSize);
            w.WriteNumber("intermediate_size_mlp", config.IntermediateSizeMlp);
            w.WriteNumber("max_position_embeddings", config.MaxPositionEmbeddings);
            w.WriteString("model_type", "llama4_text");
            w.WritePropertyName("moe_layers");
            WriteIntArray(w, config.MoeLayers);
            w.WritePropertyName("no_rope_layers");
            WriteIntArray(w, config.NoRopeLayers);
            w.WriteNumber("num_attention_heads", config.NumHeads);
            w.WriteNumber("num_experts_per_tok", config.TopK);
            w.WriteNumber("num_hidden_layers", config.NumLayers);
            w.WriteNumber("num_key_value_heads", config.NumKvHeads);
            w.WriteNumber("num_local_experts", config.NumExperts);
            WriteTokenId(w, "pad_token_id", config.PadTokenId);
            w.WriteNumber("rms_norm_eps", config.RmsNormEps);
            w.WritePropertyName("rope_scaling");
            if (config.RopeScaling is { } s)
            {
                w.WriteStartObject();
                w.WriteNumber("factor", s.Factor);
                w.WriteNumber("high_freq_factor", s.HighFreqFactor);
                w.WriteNumber("low_freq_factor", s.LowFreqFactor);
                w.WriteNumber("original_max_position_embeddings", s.OriginalMaxPositionEmbeddings);
                w.WriteString("rope_type", "llama3");
                w.WriteEndObject();
            }
            else
            {
                w.WriteNullValue();
            }
            w.WriteNumber("rope_theta", config.RopeTheta);
            w.WriteBoolean("tie_word_embeddings", config.TieWordEmbeddings);
            w.WriteString("torch_dtype", "bfloat16");
            w.WriteBoolean("use_qk_norm", config.UseQkNorm);
            w.WriteNumber("vocab_size", config.VocabSize);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length) + "\n";
    }

    private static void WriteTokenId(Utf8JsonWriter w, string name, int id)
    {
        if (id < 0)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteNumber(name, id);
        }
    }

    private static void WriteIntArray(Utf8JsonWriter w, IReadOnlyList<int> values)
    {
        w.WriteStartArray();
        foreach (int v in values)
        {
            w.WriteNumberValue(v);
        }
        w.WriteEndArray();
    }
}
