using System.Text.Json.Nodes;

namespace Distributed.Checkpoint.Tests;

[Trait("Category", "Unit")]
public sealed class Llama4ConfigParserTests
{
    private static string FixtureConfig(string fixture) =>
        File.ReadAllText(Path.Combine(CheckpointTestFiles.Fixture(fixture), "config.json"));

    private static JsonObject TextNode(JsonObject root) =>
        root["model_type"]!.GetValue<string>() == "llama4" ? root["text_config"]!.AsObject() : root;

    private static Llama4TextConfig ParseMutated(string fixture, Action<JsonObject> mutateText, out string prefix)
    {
        var root = JsonNode.Parse(FixtureConfig(fixture))!.AsObject();
        mutateText(TextNode(root));
        return Llama4ConfigParser.Parse(root.ToJsonString(), "config.json", out prefix);
    }

    [Fact]
    public void TinyMaverick_ParsesEveryField()
    {
        var c = Llama4ConfigParser.Parse(FixtureConfig("tiny-maverick"), "config.json", out string prefix);
        Assert.Equal("", prefix);
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(6, c.NumLayers);
        Assert.Equal(4, c.NumHeads);
        Assert.Equal(2, c.NumKvHeads);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(32, c.IntermediateSize);
        Assert.Equal(128, c.IntermediateSizeMlp);
        Assert.Equal(128, c.NumExperts);
        Assert.Equal(1, c.TopK);
        Assert.Equal(2, c.InterleaveMoeLayerStep);
        Assert.Equal([1, 3, 5], c.MoeLayers);
        Assert.Equal([1, 1, 1, 0, 1, 1], c.NoRopeLayers);
        Assert.Equal(16, c.AttentionChunkSize);
        Assert.False(c.UseQkNorm);
        Assert.True(c.AttnTemperatureTuning);
        Assert.Equal(4.0, c.FloorScale);
        Assert.Equal(0.1, c.AttnScale);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Null(c.RopeScaling);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(512, c.VocabSize);
        Assert.Equal(4096, c.MaxPositionEmbeddings);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal(500, c.BosTokenId);
        Assert.Equal([507, 496, 497], c.EosTokenIds);
        Assert.Equal(511, c.PadTokenId);
        Assert.True(c.IsMoeLayer(3));
        Assert.False(c.IsMoeLayer(2));
        Assert.False(c.UsesRope(3));
    }

    [Fact]
    public void TinyScout_ParsesLlama3RopeScalingAndNumericTemperatureTuning()
    {
        var c = Llama4ConfigParser.Parse(FixtureConfig("tiny-scout"), "config.json");
        Assert.Equal(new Llama3RopeScaling(16.0, 1.0, 1.0, 64), c.RopeScaling);
        Assert.True(c.AttnTemperatureTuning);
        Assert.True(c.UseQkNorm);
        Assert.Equal(Enumerable.Range(0, 8), c.MoeLayers);
        Assert.Equal(5.0, c.FloorScale);
    }

    [Fact]
    public void TinyMaverickLong_Parses()
    {
        var c = Llama4ConfigParser.Parse(FixtureConfig("tiny-maverick-long"), "config.json");
        Assert.Equal(8192, c.AttentionChunkSize);
        Assert.Equal(1048576, c.MaxPositionEmbeddings);
        Assert.Equal([1, 3], c.MoeLayers);
        Assert.Equal(16, c.NumExperts);
    }

    [Fact]
    public void Multimodal_ReadsTextConfigWithLanguageModelPrefix()
    {
        var mm = Llama4ConfigParser.Parse(FixtureConfig("tiny-maverick-mm"), "config.json", out string prefix);
        var text = Llama4ConfigParser.Parse(FixtureConfig("tiny-maverick"), "config.json");
        Assert.Equal("language_model.", prefix);
        Assert.Equal(Llama4ConfigParser.ToJson(text), Llama4ConfigParser.ToJson(mm));
    }

    [Theory]
    [InlineData("tiny-maverick")]
    [InlineData("tiny-scout")]
    [InlineData("tiny-maverick-long")]
    [InlineData("tiny-maverick-mm")]
    public void ToJson_RoundTripsEveryFixture(string fixture)
    {
        var c = Llama4ConfigParser.Parse(FixtureConfig(fixture), "config.json");
        string json = Llama4ConfigParser.ToJson(c);
        var again = Llama4ConfigParser.Parse(json, "written", out string prefix);
        Assert.Equal("", prefix);
        Assert.Equal(json, Llama4ConfigParser.ToJson(again));
        Assert.Equal(c.MoeLayers, again.MoeLayers);
        Assert.Equal(c.NoRopeLayers, again.NoRopeLayers);
        Assert.Equal(c.EosTokenIds, again.EosTokenIds);
        Assert.Equal(c.RopeScaling, again.RopeScaling);
        Assert.Equal(c with { MoeLayers = again.MoeLayers, NoRopeLayers = again.NoRopeLayers, EosTokenIds = again.EosTokenIds }, again);
    }

    [Fact]
    public void AbsentOptionalFields_DeriveAsTransformersDoes()
    {
        var c = ParseMutated("tiny-maverick", t =>
        {
            t.Remove("moe_layers");
            t.Remove("no_rope_layers");
            t.Remove("head_dim");
            t.Remove("num_key_value_heads");
            t.Remove("attention_chunk_size");
            t.Remove("use_qk_norm");
            t.Remove("rope_theta");
            t.Remove("pad_token_id");
            t["num_hidden_layers"] = 9;
            t["interleave_moe_layer_step"] = 3;
            t["eos_token_id"] = 7;
        }, out _);
        Assert.Equal([2, 5, 8], c.MoeLayers);
        Assert.Equal([1, 1, 1, 0, 1, 1, 1, 0, 1], c.NoRopeLayers);
        Assert.Equal(64 / 4, c.HeadDim);
        Assert.Equal(4, c.NumKvHeads);
        Assert.Equal(8192, c.AttentionChunkSize);
        Assert.True(c.UseQkNorm);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(-1, c.PadTokenId);
        Assert.Equal([7], c.EosTokenIds);
    }

    [Fact]
    public void EmptyNoRopeListAndCustomInterval_UseDefaultPattern()
    {
        var c = ParseMutated("tiny-maverick", t =>
        {
            t["no_rope_layers"] = new JsonArray();
            t["no_rope_layer_interval"] = 2;
            t["moe_layers"] = new JsonArray();
        }, out _);
        Assert.Equal([1, 0, 1, 0, 1, 0], c.NoRopeLayers);
        Assert.Empty(c.MoeLayers);
    }

    [Theory]
    [InlineData("0", false)]
    [InlineData("false", false)]
    [InlineData("0.5", true)]
    [InlineData("true", true)]
    public void AttnTemperatureTuning_IsTruthiness(string literal, bool expected)
    {
        var c = ParseMutated("tiny-maverick", t => t["attn_temperature_tuning"] = JsonNode.Parse(literal), out _);
        Assert.Equal(expected, c.AttnTemperatureTuning);
    }

    [Fact]
    public void RopeScalingDefaultTypeAndLegacyTypeKey_Accepted()
    {
        var none = ParseMutated("tiny-scout", t => t["rope_scaling"] = JsonNode.Parse("""{"rope_type":"default"}"""), out _);
        Assert.Null(none.RopeScaling);
        var legacy = ParseMutated("tiny-scout", t => t["rope_scaling"] = JsonNode.Parse(
            """{"type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8192}"""), out _);
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), legacy.RopeScaling);
    }

    public static TheoryData<string, string, string> InvalidTextFields => new()
    {
        // field, JSON literal to set (or "<remove>"), expected message fragment
        { "hidden_size", "<remove>", "config.json: required field 'hidden_size' is missing" },
        { "num_key_value_heads", "0", "config.json: field 'num_key_value_heads' must be a positive integer" },
        { "num_key_value_heads", "\"2\"", "config.json: field 'num_key_value_heads' must be a positive integer, got string \"2\"" },
        { "num_key_value_heads", "3", "field 'num_key_value_heads' (3) must divide 'num_attention_heads' (4)" },
        { "num_hidden_layers", "2.5", "field 'num_hidden_layers' must be a positive integer" },
        { "vocab_size", "-1", "field 'vocab_size' must be a positive integer" },
        { "intermediate_size", "null", "required field 'intermediate_size' is missing" },
        { "head_dim", "15", "field 'head_dim' must be even" },
        { "no_rope_layers", "[1,1,1,0]", "field 'no_rope_layers' must be a list of num_hidden_layers (6) entries, got 4" },
        { "no_rope_layers", "[1,1,2,0,1,1]", "field 'no_rope_layers[2]' must be 0 (NoPE) or 1 (RoPE)" },
        { "no_rope_layers", "\"all\"", "field 'no_rope_layers' must be an array of integers" },
        { "moe_layers", "[1,3,6]", "field 'moe_layers[2]' (6) is not a layer index in [0, 6)" },
        { "moe_layers", "[1,1]", "lists layer 1 twice" },
        { "moe_layers", "[-1]", "field 'moe_layers[0]' must be an integer >= 0" },
        { "num_experts_per_tok", "129", "field 'num_experts_per_tok' (129) must not exceed 'num_local_experts' (128)" },
        { "interleave_moe_layer_step", "0", "field 'interleave_moe_layer_step' must be a positive integer" },
        { "hidden_act", "\"gelu\"", "field 'hidden_act' is \"gelu\"; only \"silu\"" },
        { "attention_bias", "true", "field 'attention_bias' is true; attention projection biases are not supported" },
        { "rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":4}", "field 'rope_scaling.rope_type' is \"yarn\"; only \"llama3\"" },
        { "rope_scaling", "{\"rope_type\":\"llama3\",\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}", "required field 'rope_scaling.factor' is missing" },
        { "rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":0,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}", "field 'rope_scaling.factor' must be a positive number" },
        { "rope_scaling", "[]", "field 'rope_scaling' must be a JSON object" },
        { "use_qk_norm", "\"yes\"", "field 'use_qk_norm' must be true or false" },
        { "attn_temperature_tuning", "\"on\"", "field 'attn_temperature_tuning' must be a boolean or a number" },
        { "attention_chunk_size", "null", "field 'attention_chunk_size' must be a positive integer (null" },
        { "rope_theta", "0", "field 'rope_theta' must be a positive number" },
        { "rms_norm_eps", "\"1e-5\"", "field 'rms_norm_eps' must be a positive number" },
        { "eos_token_id", "\"</s>\"", "field 'eos_token_id' must be a non-negative integer or a list" },
        { "eos_token_id", "[1, \"x\"]", "field 'eos_token_id[1]' must be an integer >= 0" },
        { "bos_token_id", "-5", "field 'bos_token_id' must be a non-negative integer" },
        { "tie_word_embeddings", "1", "field 'tie_word_embeddings' must be true or false" },
    };

    [Theory]
    [MemberData(nameof(InvalidTextFields))]
    public void InvalidField_ThrowsNamingIt(string field, string literal, string expected)
    {
        var ex = Assert.Throws<CheckpointException>(() => ParseMutated("tiny-maverick", t =>
        {
            if (literal == "<remove>")
            {
                t.Remove(field);
            }
            else
            {
                t[field] = JsonNode.Parse(literal);
            }
        }, out _));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void InvalidFieldInMultimodal_NamesNestedPath()
    {
        var ex = Assert.Throws<CheckpointException>(() => ParseMutated("tiny-maverick-mm", t => t["num_key_value_heads"] = 0, out _));
        Assert.Contains("field 'text_config.num_key_value_heads' must be a positive integer", ex.Message);
    }

    [Theory]
    [InlineData("{\"model_type\": \"llama4_text\", ", "config.json: not well-formed JSON")]
    [InlineData("[]", "the top level must be a JSON object")]
    [InlineData("{\"hidden_size\": 64}", "required field 'model_type' is missing")]
    [InlineData("{\"model_type\": \"llama\"}", "field 'model_type' is \"llama\"; only Llama 4")]
    [InlineData("{\"model_type\": \"llama4\"}", "required field 'text_config' is missing")]
    [InlineData("{\"model_type\": \"llama4\", \"text_config\": 5}", "field 'text_config' must be a JSON object")]
    [InlineData("{\"model_type\": \"llama4\", \"text_config\": {\"model_type\": \"mllama\"}}", "field 'text_config.model_type' must be \"llama4_text\"")]
    [InlineData("{\"model_type\": \"llama4_text\", \"model_type\": \"llama4_text\"}", "field 'model_type' appears twice")]
    public void InvalidDocument_Throws(string json, string expected)
    {
        var ex = Assert.Throws<CheckpointException>(() => Llama4ConfigParser.Parse(json, "config.json"));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Multimodal_TopLevelTieUsedWhenTextConfigLacksIt()
    {
        var root = JsonNode.Parse(FixtureConfig("tiny-maverick-mm"))!.AsObject();
        root["text_config"]!.AsObject().Remove("tie_word_embeddings");
        root["tie_word_embeddings"] = true;
        Assert.True(Llama4ConfigParser.Parse(root.ToJsonString(), "config.json").TieWordEmbeddings);
    }
}
