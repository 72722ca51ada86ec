namespace Distributed.Checkpoint.Tests;

/// <summary>The multimodal release's vision tower and projector: config, tensor table and validation naming the field or tensor.</summary>
[Trait("Category", "Unit")]
public sealed class CheckpointReaderVisionTests
{
    private const string VisionShard = "model-00001-of-00004.safetensors";

    [Fact]
    public void Open_MultimodalFixture_ExposesTheVisionTowerAndKeepsTheTextFingerprint()
    {
        using var mm = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        using var text = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick"));
        var v = mm.VisionConfig!;
        Assert.Equal((48, 2, 4, 192, 56, 14, 2, 80, 80, 64), (v.HiddenSize, v.NumLayers, v.NumHeads, v.IntermediateSize, v.ImageSize, v.PatchSize,
            v.ShuffleFactor, v.ProjectorInputDim, v.VisionOutputDim, v.TextHiddenSize));
        Assert.Equal((502, 503, 504), (v.BoiTokenId, v.EoiTokenId, v.ImageTokenId));
        Assert.Equal((12, 16, 17, 588, 4), (v.HeadDim, v.PatchesPerTile, v.TokensPerTile, v.PatchInputs, v.OutputTokensPerTile));
        Assert.Equal(42, mm.VisionTensorNames.Count);
        Assert.Equal(CheckpointReader.RequiredVisionTensors(v).Select(t => t.Name).Order(StringComparer.Ordinal), mm.VisionTensorNames);
        Assert.Equal(17 * 48, mm.GetVisionF32(Llama4VisionTensorNames.PositionalEmbedding, 17, 48).Length);
        Assert.Equal(64 * 80, mm.GetVisionBf16(Llama4VisionTensorNames.Projector, 64, 80).Length);
        Assert.Equal(text.Fingerprint, mm.Fingerprint);
        Assert.Null(text.VisionConfig);
        Assert.Empty(text.VisionTensorNames);
        Assert.Contains("no vision tower", Assert.Throws<CheckpointException>(() => text.GetVisionF32(Llama4VisionTensorNames.ClassEmbedding, 48)).Message);
    }

    [Fact]
    public void Open_MissingVisionTensor_NamesItAndItsShape()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        string victim = Llama4VisionTensorNames.MlpFc2Bias(1);
        CheckpointTestFiles.RewriteTensors(temp.File(VisionShard), s => s.Name == victim ? null : s);
        CheckpointTestFiles.MutateJson(temp.File(CheckpointReader.IndexFileName), j => j["weight_map"]!.AsObject().Remove(victim));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"tensor '{victim}' (shape [48]) is missing", ex.Message);
    }

    [Fact]
    public void Open_VisionTensorWithWrongShapeOrDType_NamesIt()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        string victim = Llama4VisionTensorNames.AttentionWeight(0, 'k');
        CheckpointTestFiles.RewriteTensors(temp.File(VisionShard), s => s.Name == victim ? s with { Shape = [24, 96] } : s);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"tensor '{victim}'", ex.Message);
        Assert.Contains("has shape [24, 96], expected [48, 48]", ex.Message);

        using var temp2 = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        CheckpointTestFiles.RewriteTensors(temp2.File(VisionShard), s => s.Name == Llama4VisionTensorNames.PatchEmbedding ? s with { DType = DType.F16 } : s);
        ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp2.Path));
        Assert.Contains($"tensor '{Llama4VisionTensorNames.PatchEmbedding}'", ex.Message);
        Assert.Contains("expected BF16", ex.Message);
    }

    [Fact]
    public void Open_VisionTensorTheIndexDoesNotList_IsRefused()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        CheckpointTestFiles.MutateJson(temp.File(CheckpointReader.IndexFileName), j => j["weight_map"]!.AsObject().Remove(Llama4VisionTensorNames.ClassEmbedding));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"holds tensor '{Llama4VisionTensorNames.ClassEmbedding}', which model.safetensors.index.json does not list", ex.Message);
    }

    [Theory]
    [InlineData("hidden_act", "\"quick_gelu\"", "vision_config.hidden_act")]
    [InlineData("hidden_size", "40", "vision_config.hidden_size")]
    [InlineData("image_size", "50", "vision_config.image_size")]
    [InlineData("pixel_shuffle_ratio", "0.3", "vision_config.pixel_shuffle_ratio")]
    [InlineData("intermediate_size", "96", "vision_config.intermediate_size")]
    [InlineData("projector_output_dim", "64", "vision_config.projector_output_dim")]
    [InlineData("vision_feature_layer", "-2", "vision_config.vision_feature_layer")]
    [InlineData("num_channels", "4", "vision_config.num_channels")]
    [InlineData("patch_size", "\"14\"", "vision_config.patch_size")]
    public void Open_BadVisionConfigField_NamesIt(string field, string json, string named)
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["vision_config"]![field] = System.Text.Json.Nodes.JsonNode.Parse(json));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"'{named}'", ex.Message);
    }

    [Fact]
    public void Open_ImageTokenOutsideTheVocabulary_NamesIt()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["image_token_index"] = 200092);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("'image_token_index' (200092) is outside the text vocabulary [0, 512)", ex.Message);
    }
}
