using System.Text.Json.Nodes;

namespace Distributed.Checkpoint.Tests;

[Trait("Category", "Unit")]
public sealed class CheckpointReaderTests
{
    private const string QProj0 = "model.layers.0.self_attn.q_proj.weight";

    [Theory]
    [InlineData("tiny-maverick", "", 3, 66)]
    [InlineData("tiny-scout", "", 1, 99)]
    [InlineData("tiny-maverick-long", "", 1, 45)]
    [InlineData("tiny-maverick-mm", "language_model.", 4, 66)]
    public void Open_Fixture_ValidatesAndExposesTextTensors(string fixture, string prefix, int files, int tensors)
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture(fixture));
        Assert.Equal(prefix, reader.TensorPrefix);
        Assert.Equal(files, reader.Files.Count);
        Assert.Equal(tensors, reader.TensorNames.Count);
        Assert.Matches("^[0-9a-f]{64}$", reader.Fingerprint);
        var c = reader.Config;
        var embed = reader.GetBf16(Llama4TensorNames.Embeddings, c.VocabSize, c.HiddenSize);
        Assert.Equal(c.VocabSize * c.HiddenSize, embed.Length);
        Assert.True(reader.TryGetInfo(Llama4TensorNames.FinalNorm, out var norm));
        Assert.Equal(prefix + Llama4TensorNames.FinalNorm, norm.Name);
        Assert.All(reader.TensorNames, n => Assert.False(n.StartsWith("language_model.", StringComparison.Ordinal)));
    }

    [Fact]
    public void Multimodal_IgnoresVisionAndMatchesTextOnlyRelease()
    {
        using var mm = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        using var text = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick"));
        Assert.DoesNotContain(mm.TensorNames, n => n.Contains("vision", StringComparison.Ordinal));
        Assert.False(mm.TryGetInfo("vision_model.class_embedding", out _));
        Assert.Equal(text.TensorNames, mm.TensorNames);
        Assert.Equal(text.Fingerprint, mm.Fingerprint);
        string gateUp = Llama4TensorNames.ExpertsGateUp(3);
        Assert.Equal(text.GetExpertSlice(gateUp, 77, 128, 64, 64).ToArray(), mm.GetExpertSlice(gateUp, 77, 128, 64, 64).ToArray());
        Assert.Equal(text.GetF32(Llama4TensorNames.InputNorm(5), 64), mm.GetF32(Llama4TensorNames.InputNorm(5), 64));
    }

    [Fact]
    public void GetExpertSlice_EqualsTheExpertsPartOfTheWholeTensor()
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick"));
        string gateUp = Llama4TensorNames.ExpertsGateUp(1);
        string down = Llama4TensorNames.ExpertsDown(5);
        var wholeGateUp = reader.GetBf16(gateUp, 128, 64, 64);
        var wholeDown = reader.GetBf16(down, 128, 32, 64);
        foreach (int e in new[] { 0, 1, 63, 127 })
        {
            Assert.Equal(wholeGateUp.Slice(e * 64 * 64, 64 * 64).ToArray(), reader.GetExpertSlice(gateUp, e, 128, 64, 64).ToArray());
            Assert.Equal(wholeDown.Slice(e * 32 * 64, 32 * 64).ToArray(), reader.GetExpertSlice(down, e, 128, 32, 64).ToArray());
        }
        var info = reader.GetInfo(gateUp);
        using var shard = SafetensorsFile.Open(info.File);
        var raw = shard.GetBytes(info.Name, 5L * 64 * 64 * 2, 64 * 64 * 2);
        Assert.Equal(raw.ToArray(), System.Runtime.InteropServices.MemoryMarshal.AsBytes(reader.GetExpertSlice(gateUp, 5, 128, 64, 64)).ToArray());
        Assert.Equal(raw.ToArray(), reader.GetRawBytes(gateUp, 5L * 64 * 64 * 2, 64 * 64 * 2).ToArray());
    }

    [Fact]
    public void GetExpertSlice_BadArguments_Throw()
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick"));
        string gateUp = Llama4TensorNames.ExpertsGateUp(1);
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.GetExpertSlice(gateUp, 128, 128, 64, 64).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.GetExpertSlice(gateUp, -1, 128, 64, 64).Length);
        Assert.Throws<ArgumentException>(() => reader.GetExpertSlice(gateUp, 0, 128, 4096).Length);
        var ex = Assert.Throws<CheckpointException>(() => reader.GetExpertSlice(gateUp, 0, 128, 64, 32).Length);
        Assert.Contains("shape [128, 64, 64], expected [128, 64, 32]", ex.Message);
        Assert.Throws<CheckpointException>(() => reader.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(0), 0, 128, 64, 64).Length);
    }

    [Fact]
    public void GetBf16_WrongShapeOrMissing_NamesTensorAndShapes()
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        var ex = Assert.Throws<CheckpointException>(() => reader.GetBf16(QProj0, 64, 32).Length);
        Assert.Contains("tensor 'language_model.model.layers.0.self_attn.q_proj.weight'", ex.Message);
        Assert.Contains("has shape [64, 64], expected [64, 32]", ex.Message);
        var missing = Assert.Throws<CheckpointException>(() => reader.GetBf16("model.layers.9.self_attn.q_proj.weight", 64, 64).Length);
        Assert.Contains("'language_model.model.layers.9.self_attn.q_proj.weight' is missing", missing.Message);
        Assert.Throws<CheckpointException>(() => reader.GetInfo("nope"));
    }

    [Fact]
    public void GetF32_NormWeights_AreWidenedBf16()
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-scout"));
        float[] norm = reader.GetF32(Llama4TensorNames.FinalNorm, 64);
        var bits = reader.GetBf16(Llama4TensorNames.FinalNorm, 64);
        Assert.Equal(bits.ToArray().Select(DTypeInfo.Bf16ToFloat).ToArray(), norm);
        Assert.Throws<CheckpointException>(() => reader.GetF32(Llama4TensorNames.FinalNorm, 65));
    }

    [Fact]
    public void Fingerprint_StableAcrossOpensAndDifferentForDifferentModels()
    {
        string a1, a2, b, scout;
        using (var r = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick")))
        {
            a1 = r.Fingerprint;
        }
        using (var r = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick")))
        {
            a2 = r.Fingerprint;
        }
        using (var r = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-long")))
        {
            b = r.Fingerprint;
        }
        using (var r = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-scout")))
        {
            scout = r.Fingerprint;
        }
        Assert.Equal(a1, a2);
        Assert.NotEqual(a1, b);
        Assert.NotEqual(a1, scout);

        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["rope_theta"] = 10000.0);
        using var changed = CheckpointReader.Open(temp.Path);
        Assert.NotEqual(a1, changed.Fingerprint);

        using var irrelevant = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateJson(irrelevant.File("config.json"), c => c["transformers_version"] = "9.9.9");
        using var same = CheckpointReader.Open(irrelevant.Path);
        Assert.Equal(a1, same.Fingerprint);
    }

    [Fact]
    public void Dispose_ThenUse_Throws()
    {
        var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-scout"));
        reader.Dispose();
        reader.Dispose();
        Assert.Throws<ObjectDisposedException>(() => reader.GetBf16(QProj0, 64, 64).Length);
    }

    [Fact]
    public void Open_MissingDirectoryOrConfig_Throws()
    {
        using var temp = new TempDir();
        Assert.Contains("does not exist", Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.File("nope"))).Message);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("config.json: not found", ex.Message);
    }

    [Fact]
    public void Open_MalformedConfig_Throws()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        File.WriteAllText(temp.File("config.json"), "{\"model_type\": \"llama4_text\",,}");
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("config.json: not well-formed JSON", ex.Message);
    }

    [Fact]
    public void Open_ConfigMissingFieldOrWrongType_NamesField()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm");
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["text_config"]!.AsObject().Remove("vocab_size"));
        Assert.Contains("required field 'text_config.vocab_size' is missing",
            Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["text_config"]!["vocab_size"] = "512");
        Assert.Contains("field 'text_config.vocab_size' must be a positive integer",
            Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
    }

    [Fact]
    public void Open_MissingTensor_NamesIt()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        string victim = Llama4TensorNames.KProj(3);
        CheckpointTestFiles.RewriteTensors(temp.File("model.safetensors"), s => s.Name == victim ? null : s);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"tensor '{victim}' (shape [32, 64]) is missing", ex.Message);
    }

    [Fact]
    public void Open_WrongShape_NamesTensorAndBothShapes()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        string victim = Llama4TensorNames.ExpertsDown(6);
        CheckpointTestFiles.RewriteTensors(temp.File("model.safetensors"), s => s.Name == victim ? s with { Shape = [16, 64, 32] } : s);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"tensor '{victim}'", ex.Message);
        Assert.Contains("has shape [16, 64, 32], expected [16, 32, 64]", ex.Message);
    }

    [Fact]
    public void Open_WrongDType_NamesTensor()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        string victim = Llama4TensorNames.Router(2);
        CheckpointTestFiles.RewriteTensors(temp.File("model.safetensors"), s => s.Name == victim ? s with { DType = DType.F16 } : s);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains($"tensor '{victim}'", ex.Message);
        Assert.Contains("has dtype F16, expected BF16", ex.Message);
    }

    [Fact]
    public void Open_F32NormWeights_Accepted()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        string path = temp.File("model.safetensors");
        var tensors = new List<(SafetensorsTensorSpec, ReadOnlyMemory<byte>)>();
        float[] expected;
        using (var file = SafetensorsFile.Open(path))
        {
            expected = file.ReadF32(Llama4TensorNames.FinalNorm);
            foreach (string name in file.TensorNames)
            {
                var info = file.GetInfo(name);
                tensors.Add(name == Llama4TensorNames.FinalNorm
                    ? (new SafetensorsTensorSpec(name, DType.F32, info.Shape), System.Runtime.InteropServices.MemoryMarshal.AsBytes(expected.AsSpan()).ToArray())
                    : (new SafetensorsTensorSpec(name, info.DType, info.Shape), file.GetBytes(name).ToArray()));
            }
        }
        SafetensorsWriter.WriteFile(path, tensors);
        using var reader = CheckpointReader.Open(temp.Path);
        Assert.Equal(expected, reader.GetF32(Llama4TensorNames.FinalNorm, 64));
        Assert.Throws<CheckpointException>(() => reader.GetBf16(Llama4TensorNames.FinalNorm, 64).Length);
    }

    [Fact]
    public void Open_TruncatedShard_NamesFile()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        string shard = temp.File("model-00002-of-00003.safetensors");
        using (var fs = new FileStream(shard, FileMode.Open))
        {
            fs.SetLength(fs.Length - 1);
        }
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains(shard, ex.Message);
        Assert.Contains("truncated", ex.Message);
    }

    [Fact]
    public void Open_HeaderOffsetsOutOfRange_NamesTensor()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        string shard = temp.File("model-00003-of-00003.safetensors");
        CheckpointTestFiles.MutateHeader(shard, h =>
        {
            var entry = h["lm_head.weight"]!.AsObject();
            long begin = entry["data_offsets"]![0]!.GetValue<long>();
            entry["shape"] = new JsonArray(1024, 64);
            entry["data_offsets"] = new JsonArray(begin, begin + (1024 * 64 * 2));
        });
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("tensor 'lm_head.weight'", ex.Message);
        Assert.Contains("exceed the data section", ex.Message);
    }

    [Fact]
    public void Open_UnsupportedDTypeInShard_NamesTensor()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateHeader(temp.File("model-00001-of-00003.safetensors"),
            h => h["model.embed_tokens.weight"]!["dtype"] = "F8_E5M2");
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("tensor 'model.embed_tokens.weight': dtype 'F8_E5M2' is not supported", ex.Message);
    }

    [Fact]
    public void Open_Fp8WhereBf16IsRequired_NamesTensorAndDTypes()
    {
        // F8_E4M3 is a supported dtype now, but only for routed experts: anywhere else it is a wrong dtype.
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateHeader(temp.File("model-00001-of-00003.safetensors"), h =>
        {
            var e = h["model.embed_tokens.weight"]!.AsObject();
            e["dtype"] = "F8_E4M3";
            e["shape"] = new JsonArray(512, 128);
        });
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("tensor 'model.embed_tokens.weight'", ex.Message);
        Assert.Contains("has dtype F8E4M3, expected BF16", ex.Message);
    }

    [Fact]
    public void Open_IndexNamesMissingFile_Throws()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        File.Delete(temp.File("model-00003-of-00003.safetensors"));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("model.safetensors.index.json", ex.Message);
        Assert.Contains("names 'model-00003-of-00003.safetensors', which does not exist", ex.Message);
    }

    [Fact]
    public void Open_IndexPointsAtWrongShard_Throws()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateJson(temp.File(CheckpointReader.IndexFileName),
            i => i["weight_map"]!["lm_head.weight"] = "model-00001-of-00003.safetensors");
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("tensor 'lm_head.weight' is mapped to 'model-00001-of-00003.safetensors', which does not contain it", ex.Message);
    }

    [Fact]
    public void Open_ShardHoldsTensorTheIndexOmits_Throws()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateJson(temp.File(CheckpointReader.IndexFileName),
            i => i["weight_map"]!.AsObject().Remove("model.norm.weight"));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains("holds tensor 'model.norm.weight', which model.safetensors.index.json does not list", ex.Message);
    }

    [Theory]
    [InlineData("../model-00001-of-00003.safetensors", "not a plain file name")]
    [InlineData("/etc/passwd", "not a plain file name")]
    [InlineData("", "not a plain file name")]
    public void Open_IndexWithPathInFileName_Throws(string file, string expected)
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        CheckpointTestFiles.MutateJson(temp.File(CheckpointReader.IndexFileName), i => i["weight_map"]!["lm_head.weight"] = file);
        Assert.Contains(expected, Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
    }

    [Theory]
    [InlineData("{}", "required field 'weight_map' is missing")]
    [InlineData("{\"weight_map\": []}", "field 'weight_map' must be an object")]
    [InlineData("{\"weight_map\": {}}", "weight_map is empty")]
    [InlineData("{\"weight_map\": {\"a\": 3}}", "weight_map entry 'a' must be a file name string")]
    [InlineData("{\"weight_map\": ", "not well-formed JSON")]
    public void Open_MalformedIndex_Throws(string json, string expected)
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-maverick");
        File.WriteAllText(temp.File(CheckpointReader.IndexFileName), json);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains(expected, ex.Message);
        Assert.Contains(CheckpointReader.IndexFileName, ex.Message);
    }

    [Fact]
    public void Open_NoWeightsOrAmbiguousWeights_Throws()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        File.Move(temp.File("model.safetensors"), temp.File("weights.safetensors"));
        using (var single = CheckpointReader.Open(temp.Path))
        {
            Assert.EndsWith("weights.safetensors", single.Files.Single());
        }
        File.Copy(temp.File("weights.safetensors"), temp.File("other.safetensors"));
        Assert.Contains("but no model.safetensors.index.json", Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        File.Delete(temp.File("weights.safetensors"));
        File.Delete(temp.File("other.safetensors"));
        Assert.Contains("no weights found", Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
    }

    [Fact]
    public void Open_TiedEmbeddingsWithoutLmHead_Accepted_UntiedRejected()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        CheckpointTestFiles.RewriteTensors(temp.File("model.safetensors"), s => s.Name == Llama4TensorNames.LmHead ? null : s);
        Assert.Contains("tensor 'lm_head.weight' (shape [512, 64]) is missing",
            Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        CheckpointTestFiles.MutateJson(temp.File("config.json"), c => c["tie_word_embeddings"] = true);
        using var reader = CheckpointReader.Open(temp.Path);
        Assert.True(reader.Config.TieWordEmbeddings);
        Assert.False(reader.TryGetInfo(Llama4TensorNames.LmHead, out _));
    }

    [Fact]
    public void RequiredTensors_CoverEveryFixtureTensor()
    {
        using var reader = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick"));
        var required = CheckpointReader.RequiredTensors(reader.Config).Select(t => t.Name).Order(StringComparer.Ordinal);
        Assert.Equal(reader.TensorNames, required);
    }

    [Fact]
    public void FusedExpertsBeyond2Pow31Elements_SlicesUseLongOffsets()
    {
        // One MoE layer with gate_up [128, 64, 2^19] (2^32 elements, 8 GiB) and down [128, 2^18, 64] (4 GiB), as a
        // sparse file: only the header and a few marker pages take disk space.
        using var temp = new TempDir();
        const int experts = 128, hidden = 64, inter = 1 << 18;
        var config = new Llama4TextConfig
        {
            HiddenSize = hidden, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, HeadDim = 16, IntermediateSize = inter,
            IntermediateSizeMlp = 128, NumExperts = experts, TopK = 1, MoeLayers = [0], NoRopeLayers = [1],
            AttentionChunkSize = 16, UseQkNorm = false, AttnTemperatureTuning = true, FloorScale = 8192, AttnScale = 0.1,
            RopeTheta = 500000, RopeScaling = null, RmsNormEps = 1e-5, VocabSize = 32, MaxPositionEmbeddings = 4096,
            TieWordEmbeddings = false,
        };
        File.WriteAllText(temp.File("config.json"), Llama4ConfigParser.ToJson(config));
        var specs = CheckpointReader.RequiredTensors(config).Select(t => new SafetensorsTensorSpec(t.Name, DType.BF16, t.Shape)).ToArray();
        byte[] header = SafetensorsWriter.BuildHeader(specs, null);
        long dataStart = header.Length;
        long offset = 0, gateUpOffset = 0, downOffset = 0;
        foreach (var s in specs)
        {
            if (s.Name == Llama4TensorNames.ExpertsGateUp(0))
            {
                gateUpOffset = offset;
            }
            if (s.Name == Llama4TensorNames.ExpertsDown(0))
            {
                downOffset = offset;
            }
            offset += s.ByteLength;
        }
        long slice = (long)hidden * 2 * inter * 2;
        using (var fs = new FileStream(temp.File("model.safetensors"), FileMode.CreateNew))
        {
            fs.Write(header);
            fs.SetLength(dataStart + offset);
            fs.Position = dataStart + gateUpOffset + (127 * slice);
            fs.Write([0x34, 0x12]);
            fs.Position = dataStart + gateUpOffset + (128 * slice) - 2;
            fs.Write([0x78, 0x56]);
            fs.Position = dataStart + downOffset + (100L * inter * hidden * 2) + 2;
            fs.Write([0xCD, 0xAB]);
        }

        using var reader = CheckpointReader.Open(temp.Path);
        var gateUp = reader.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(0), 127, experts, hidden, 2 * inter);
        Assert.Equal(hidden * 2 * inter, gateUp.Length);
        Assert.Equal(0x1234, gateUp[0]);
        Assert.Equal(0x5678, gateUp[^1]);
        Assert.Equal(0, reader.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(0), 126, experts, hidden, 2 * inter)[^1]);
        var down = reader.GetExpertSlice(Llama4TensorNames.ExpertsDown(0), 100, experts, inter, hidden);
        Assert.Equal(0xABCD, down[1]);
        var ex = Assert.Throws<CheckpointException>(() => reader.GetBf16(Llama4TensorNames.ExpertsGateUp(0), experts, hidden, 2 * inter).Length);
        Assert.Contains("more than one span can hold", ex.Message);
        Assert.Equal(4_294_967_296L, reader.GetInfo(Llama4TensorNames.ExpertsGateUp(0)).ElementCount);
    }
}
