using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>
/// The vision tower of a multimodal Llama 4 release (<c>Llama4ForConditionalGeneration</c>): the <c>vision_config</c>
/// fields that change the math, the top-level image token ids, and the text hidden size the projector maps to. Derived
/// sizes follow HF <c>modeling_llama4.py</c> (<c>Llama4VisionModel</c>, <c>Llama4VisionPixelShuffleMLP</c>,
/// <c>Llama4MultiModalProjector</c>) and <c>processing_llama4.py</c>.
/// </summary>
public sealed record Llama4VisionConfig
{
    /// <summary><c>hidden_size</c> of the encoder (1408 in the releases).</summary>
    public required int HiddenSize { get; init; }
    /// <summary><c>num_hidden_layers</c> (34).</summary>
    public required int NumLayers { get; init; }
    /// <summary><c>num_attention_heads</c> (16).</summary>
    public required int NumHeads { get; init; }
    /// <summary><c>intermediate_size</c>: the encoder MLP width and the pixel-shuffled width (5632).</summary>
    public required int IntermediateSize { get; init; }
    /// <summary><c>image_size</c>: the side of one square tile in pixels (336).</summary>
    public required int ImageSize { get; init; }
    /// <summary><c>patch_size</c>: the side of one patch in pixels (14).</summary>
    public required int PatchSize { get; init; }
    /// <summary><c>num_channels</c> (3: RGB).</summary>
    public int NumChannels { get; init; } = 3;
    /// <summary><c>norm_eps</c> of every LayerNorm.</summary>
    public required double NormEps { get; init; }
    /// <summary><c>rope_theta</c> of the 2-D vision RoPE.</summary>
    public required double RopeTheta { get; init; }
    /// <summary>1 / <c>pixel_shuffle_ratio</c>: patches merged per side into one output token (2).</summary>
    public required int ShuffleFactor { get; init; }
    /// <summary><c>projector_input_dim</c>: the vision adapter's fc1 output width (4096).</summary>
    public required int ProjectorInputDim { get; init; }
    /// <summary><c>projector_output_dim</c> = <c>vision_output_dim</c>: the vision model's output width (4096).</summary>
    public required int VisionOutputDim { get; init; }
    /// <summary>The text model's <c>hidden_size</c>: the projector's output width.</summary>
    public required int TextHiddenSize { get; init; }
    /// <summary><c>boi_token_index</c>: <c>&lt;|image_start|&gt;</c> (200080 in the releases).</summary>
    public required int BoiTokenId { get; init; }
    /// <summary><c>eoi_token_index</c>: <c>&lt;|image_end|&gt;</c> (200081).</summary>
    public required int EoiTokenId { get; init; }
    /// <summary><c>image_token_index</c>: <c>&lt;|patch|&gt;</c>, whose embeddings the projected rows replace (200092).</summary>
    public required int ImageTokenId { get; init; }

    /// <summary>Per-head width.</summary>
    public int HeadDim => HiddenSize / NumHeads;

    /// <summary>Patches along one side of a tile (24).</summary>
    public int PatchesPerSide => ImageSize / PatchSize;

    /// <summary>Patches per tile (576); the encoder sees one more token, the class token.</summary>
    public int PatchesPerTile => PatchesPerSide * PatchesPerSide;

    /// <summary>Encoder tokens per tile: the patches then the class token (577).</summary>
    public int TokensPerTile => PatchesPerTile + 1;

    /// <summary>Inputs of the unfold patch embedding: channel × patch × patch (588).</summary>
    public int PatchInputs => NumChannels * PatchSize * PatchSize;

    /// <summary>Output rows (<c>&lt;|patch|&gt;</c> tokens) per tile after pixel shuffle (144): <c>num_patches_per_chunk</c>.</summary>
    public int OutputTokensPerTile => PatchesPerTile / (ShuffleFactor * ShuffleFactor);
}

/// <summary>
/// Reads the <c>vision_config</c> of a multimodal Llama 4 <c>config.json</c> (and its top-level image token ids) into a
/// validated <see cref="Llama4VisionConfig"/>.
/// <para>
/// Required: <c>hidden_size</c>, <c>num_hidden_layers</c>, <c>num_attention_heads</c>, <c>intermediate_size</c>,
/// <c>image_size</c>, <c>patch_size</c>, <c>projector_input_dim</c>, <c>projector_output_dim</c>,
/// <c>vision_output_dim</c> (transformers' defaults for these do not describe any release). Optional, with HF's defaults:
/// <c>num_channels</c> 3, <c>norm_eps</c> 1e-5, <c>pixel_shuffle_ratio</c> 0.5, <c>rope_theta</c> 10000,
/// <c>hidden_act</c> "gelu", <c>vision_feature_layer</c> -1, <c>vision_feature_select_strategy</c> "default"; top level
/// <c>boi_token_index</c> 200080, <c>eoi_token_index</c> 200081, <c>image_token_index</c> 200092.
/// <c>multi_modal_projector_bias</c> is ignored, as HF ignores it (the projector has no bias).
/// </para>
/// <para>
/// Rejected, naming the field: other activations, feature layers or strategies; <c>num_channels</c> ≠ 3;
/// <c>hidden_size</c> not a multiple of 4 · heads (the 2-D RoPE splits each head's pairs into a column and a row half);
/// <c>image_size</c> not a multiple of <c>patch_size</c>; a <c>pixel_shuffle_ratio</c> that is not 1/n for an n dividing
/// the patches per side; <c>intermediate_size</c> ≠ <c>hidden_size</c> · n² (the adapter's fc1 reads the pixel-shuffled
/// rows); <c>projector_output_dim</c> ≠ <c>vision_output_dim</c>; token ids outside the text vocabulary or repeated.
/// </para>
/// </summary>
public static class Llama4VisionConfigParser
{
    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = 32 };

    /// <summary>
    /// The vision config of <paramref name="json"/>, or null when it has no <c>vision_config</c> (a text-only model, or a
    /// <c>llama4_text</c> config).
    /// </summary>
    /// <param name="text">The already validated text config (projector width, vocabulary).</param>
    /// <exception cref="CheckpointException">An invalid field; the message names it.</exception>
    public static Llama4VisionConfig? Parse(string json, string sourceName, Llama4TextConfig text)
    {
        ArgumentNullException.ThrowIfNull(json);
        ArgumentException.ThrowIfNullOrEmpty(sourceName);
        ArgumentNullException.ThrowIfNull(text);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, DocumentOptions);
        }
        catch (JsonException ex)
        {
            throw new CheckpointException($"{sourceName}: not well-formed JSON: {ex.Message}", ex);
        }
        using (doc)
        {
            var top = JsonFields.Of(doc.RootElement, sourceName, "", "the top level");
            if (top.OptionalString("model_type") != "llama4" || !top.TryGet("vision_config", out var visionEl))
            {
                return null;
            }
            var f = JsonFields.Of(visionEl, sourceName, "vision_config.", "field 'vision_config'");
            string? modelType = f.OptionalString("model_type");
            if (modelType is not null and not "llama4_vision_model")
            {
                throw f.Error("model_type", "\"llama4_vision_model\"", visionEl.GetProperty("model_type"));
            }
            int hidden = f.RequiredPositiveInt("hidden_size");
            int layers = f.RequiredPositiveInt("num_hidden_layers");
            int heads = f.RequiredPositiveInt("num_attention_heads");
            if (hidden % (4 * heads) != 0)
            {
                throw new CheckpointException(
                    $"{sourceName}: field 'vision_config.hidden_size' ({hidden}) must be a multiple of 4 x num_attention_heads ({heads}): " +
                    "the 2-D vision RoPE rotates half of each head's pairs by the patch column and half by its row");
            }
            int intermediate = f.RequiredPositiveInt("intermediate_size");
            int imageSize = f.RequiredPositiveInt("image_size");
            int patch = f.RequiredPositiveInt("patch_size");
            if (imageSize % patch != 0)
            {
                throw new CheckpointException($"{sourceName}: field 'vision_config.image_size' ({imageSize}) must be a multiple of 'vision_config.patch_size' ({patch})");
            }
            int channels = f.OptionalPositiveInt("num_channels", 3);
            if (channels != 3)
            {
                throw f.Error("num_channels", $"3 (RGB images), got {channels}");
            }
            double ratio = f.OptionalPositiveNumber("pixel_shuffle_ratio", 0.5);
            int factor = (int)Math.Round(1.0 / ratio);
            int perSide = imageSize / patch;
            if (ratio > 1 || Math.Abs((factor * ratio) - 1.0) > 1e-9 || perSide % factor != 0)
            {
                throw f.Error("pixel_shuffle_ratio", $"1/n for an integer n that divides the {perSide} patches per side, got {ratio}");
            }
            if ((long)hidden * factor * factor != intermediate)
            {
                throw new CheckpointException(
                    $"{sourceName}: field 'vision_config.intermediate_size' ({intermediate}) must equal hidden_size / pixel_shuffle_ratio^2 = " +
                    $"{(long)hidden * factor * factor}: the vision adapter's fc1 reads the pixel-shuffled rows");
            }
            int projectorIn = f.RequiredPositiveInt("projector_input_dim");
            int projectorOut = f.RequiredPositiveInt("projector_output_dim");
            int outputDim = f.RequiredPositiveInt("vision_output_dim");
            if (projectorOut != outputDim)
            {
                throw new CheckpointException(
                    $"{sourceName}: field 'vision_config.projector_output_dim' ({projectorOut}) must equal 'vision_config.vision_output_dim' ({outputDim}): " +
                    "the multimodal projector reads the vision adapter's output");
            }
            string? act = f.OptionalString("hidden_act");
            if (act is not null and not "gelu")
            {
                throw new CheckpointException($"{sourceName}: field 'vision_config.hidden_act' is \"{act}\"; only \"gelu\" (exact erf) is supported");
            }
            if (f.TryGet("vision_feature_layer", out var layerEl) && !(layerEl.ValueKind == JsonValueKind.Number && layerEl.TryGetInt32(out int fl) && fl == -1))
            {
                throw f.Error("vision_feature_layer", "-1 (the last layer, as Llama 4 uses it)", layerEl);
            }
            string? strategy = f.OptionalString("vision_feature_select_strategy");
            if (strategy is not null and not "default")
            {
                throw new CheckpointException($"{sourceName}: field 'vision_config.vision_feature_select_strategy' is \"{strategy}\"; only \"default\" is supported");
            }
            var config = new Llama4VisionConfig
            {
                HiddenSize = hidden,
                NumLayers = layers,
                NumHeads = heads,
                IntermediateSize = intermediate,
                ImageSize = imageSize,
                PatchSize = patch,
                NumChannels = channels,
                NormEps = f.OptionalPositiveNumber("norm_eps", 1e-5),
                RopeTheta = f.OptionalPositiveNumber("rope_theta", 10000),
                ShuffleFactor = factor,
                ProjectorInputDim = projectorIn,
                VisionOutputDim = outputDim,
                TextHiddenSize = text.HiddenSize,
                BoiTokenId = top.OptionalNonNegativeInt("boi_token_index", 200080),
                EoiTokenId = top.OptionalNonNegativeInt("eoi_token_index", 200081),
                ImageTokenId = top.OptionalNonNegativeInt("image_token_index", 200092),
            };
            foreach (var (field, id) in new[] { ("boi_token_index", config.BoiTokenId), ("eoi_token_index", config.EoiTokenId), ("image_token_index", config.ImageTokenId) })
            {
                if (id >= text.VocabSize)
                {
                    throw new CheckpointException($"{sourceName}: field '{field}' ({id}) is outside the text vocabulary [0, {text.VocabSize})");
                }
            }
            if (config.BoiTokenId == config.EoiTokenId || config.BoiTokenId == config.ImageTokenId || config.EoiTokenId == config.ImageTokenId)
            {
                throw new CheckpointException(
                    $"{sourceName}: fields 'boi_token_index' ({config.BoiTokenId}), 'eoi_token_index' ({config.EoiTokenId}) and " +
                    $"'image_token_index' ({config.ImageTokenId}) must be three different tokens");
            }
            return config;
        }
    }
}
