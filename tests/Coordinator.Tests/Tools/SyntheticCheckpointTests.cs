using System.Text.Json;
using Distributed.Coordinator.Tools;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Tests.Tools;

[Trait("Category", "Unit")]
public sealed class SyntheticCheckpointTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "synthetic-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_root))
        {
            Directory.Delete(_root, recursive: true);
        }
    }

    private string Write(SyntheticCheckpointOptions options, string name, StringWriter? log = null)
    {
        string dir = Path.Combine(_root, name);
        SyntheticCheckpoint.Write(dir, options, log ?? new StringWriter());
        return dir;
    }

    [Fact]
    public void TinyPreset_WritesShardedCheckpointThatValidates()
    {
        var options = SyntheticCheckpointOptions.Preset("tiny");
        var log = new StringWriter();
        string dir = Write(options, "tiny", log);

        using var reader = CheckpointReader.Open(dir);
        var c = reader.Config;
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(4, c.NumLayers);
        Assert.Equal([1, 3], c.MoeLayers);
        Assert.Equal([1, 1, 1, 0], c.NoRopeLayers);
        Assert.Equal(8, c.NumExperts);
        Assert.True(c.UseQkNorm);
        Assert.Equal(16, c.AttentionChunkSize);
        Assert.True(reader.Files.Count > 1);
        Assert.True(File.Exists(Path.Combine(dir, CheckpointReader.IndexFileName)));
        Assert.Equal(options.TotalBytes, reader.TensorNames.Sum(n => reader.GetInfo(n).ByteLength));
        Assert.All(reader.TensorNames, n => Assert.Equal(DType.BF16, reader.GetInfo(n).DType));
        Assert.Contains($"fingerprint {reader.Fingerprint}", log.ToString());

        using var gen = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "generation_config.json")));
        Assert.Equal(1, gen.RootElement.GetProperty("bos_token_id").GetInt32());
        Assert.Equal(255, gen.RootElement.GetProperty("pad_token_id").GetInt32());
    }

    [Fact]
    public void Tokenizer_IsWrittenWhenTheVocabularyHoldsOne_AndServesTheLlama4Contract()
    {
        // The tiny preset's 256-entry vocabulary cannot hold 256 byte tokens plus the specials: no tokenizer, said so.
        var log = new StringWriter();
        string small = Write(SyntheticCheckpointOptions.Preset("tiny"), "small", log);
        Assert.False(File.Exists(Path.Combine(small, "tokenizer.json")));
        Assert.Contains("no tokenizer.json", log.ToString(), StringComparison.Ordinal);

        foreach (int vocab in new[] { SyntheticTokenizer.MinVocabSize, 512, 8192 })
        {
            string dir = Write(SyntheticCheckpointOptions.Preset("tiny") with { VocabSize = vocab }, $"v{vocab}");
            var t = Distributed.Coordinator.Serving.Tokenization.Llama4Tokenizer.Load(dir);
            Assert.Equal(vocab, t.VocabSize);
            Assert.Equal(1, t.BosTokenId);
            Assert.True(t.IsEos(2));
            Assert.Equal(vocab - 1, t.PadTokenId);
            foreach (string text in new[] { "hello world, the cat", "Ünïcödé ✓ 123\n\ttabs", "" })
            {
                int[] ids = t.Encode(text);
                Assert.All(ids, id => Assert.InRange(id, 5, vocab - 2));
                Assert.Equal(text, t.Decode(ids));
            }
            // Merges join letter pairs once the vocabulary has room for them.
            Assert.Equal(vocab > SyntheticTokenizer.MinVocabSize ? 1 : 2, t.Encode("ab").Length);
            Assert.Equal(vocab == 8192 ? 1 : 3, t.Encode(" he").Length);
            // The chat format renders: <|begin_of_text|> <|header_start|> user <|header_end|> … <|eot|>.
            int[] chat = t.EncodeChat([new(Distributed.Coordinator.Serving.Tokenization.ChatRole.User, "hi")], addGenerationPrompt: false);
            Assert.Equal([1, 0], chat[..2]);
            Assert.Contains(3, chat);
            Assert.Equal(2, chat[^1]);
        }
    }

    [Fact]
    public void Weights_AreDeterministicIndependentOfShardingAndSeedSensitive()
    {
        var tiny = SyntheticCheckpointOptions.Preset("tiny");
        string a = Write(tiny, "a");
        string b = Write(tiny with { MaxShardBytes = 1L << 30 }, "b");
        string c = Write(tiny with { Seed = 2 }, "c");
        using var ra = CheckpointReader.Open(a);
        using var rb = CheckpointReader.Open(b);
        using var rc = CheckpointReader.Open(c);
        Assert.Single(rb.Files);
        Assert.Equal(ra.Fingerprint, rb.Fingerprint);
        Assert.Equal(ra.Fingerprint, rc.Fingerprint);
        string gateUp = Llama4TensorNames.ExpertsGateUp(3);
        Assert.Equal(ra.GetBf16(gateUp, 8, 64, 64).ToArray(), rb.GetBf16(gateUp, 8, 64, 64).ToArray());
        Assert.NotEqual(ra.GetBf16(gateUp, 8, 64, 64).ToArray(), rc.GetBf16(gateUp, 8, 64, 64).ToArray());
        Assert.NotEqual(ra.GetExpertSlice(gateUp, 0, 8, 64, 64).ToArray(), ra.GetExpertSlice(gateUp, 1, 8, 64, 64).ToArray());
    }

    [Fact]
    public void Weights_HaveTheDocumentedScales()
    {
        var options = SyntheticCheckpointOptions.Preset("tiny") with { HiddenSize = 256, VocabSize = 1024, IntermediateSize = 128 };
        string dir = Write(options, "scales");
        using var reader = CheckpointReader.Open(dir);

        static (double Mean, double Std) Stats(ReadOnlySpan<ushort> bits)
        {
            double sum = 0, sq = 0;
            foreach (ushort b in bits)
            {
                double v = DTypeInfo.Bf16ToFloat(b);
                sum += v;
                sq += v * v;
            }
            double mean = sum / bits.Length;
            return (mean, Math.Sqrt((sq / bits.Length) - (mean * mean)));
        }

        var q = Stats(reader.GetBf16(Llama4TensorNames.QProj(0), 64, 256));
        Assert.InRange(q.Std, 0.95 / 16, 1.05 / 16);
        Assert.InRange(q.Mean, -0.01, 0.01);
        var down = Stats(reader.GetExpertSlice(Llama4TensorNames.ExpertsDown(1), 2, 8, 128, 256));
        Assert.InRange(down.Std, 0.95 / Math.Sqrt(128), 1.05 / Math.Sqrt(128));
        var embed = Stats(reader.GetBf16(Llama4TensorNames.Embeddings, 1024, 256));
        Assert.InRange(embed.Std, 0.97, 1.03);
        float[] norm = reader.GetF32(Llama4TensorNames.InputNorm(2), 256);
        Assert.All(norm, v => Assert.InRange(v, 0.9f, 1.1f));
        Assert.InRange(norm.Average(), 0.99, 1.01);
    }

    [Fact]
    public void TiedEmbeddings_OmitLmHead()
    {
        string dir = Write(SyntheticCheckpointOptions.Preset("tiny") with { TieWordEmbeddings = true }, "tied");
        using var reader = CheckpointReader.Open(dir);
        Assert.True(reader.Config.TieWordEmbeddings);
        Assert.False(reader.TryGetInfo(Llama4TensorNames.LmHead, out _));
    }

    [Fact]
    public void Write_IntoNonEmptyDirectory_IsRefused()
    {
        string dir = Path.Combine(_root, "busy");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "keep.txt"), "x");
        var ex = Assert.Throws<ArgumentException>(() => SyntheticCheckpoint.Write(dir, SyntheticCheckpointOptions.Preset("tiny"), TextWriter.Null));
        Assert.Contains("is not empty", ex.Message);
        Assert.Equal(["keep.txt"], Directory.GetFiles(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void MaverickPreset_HasTheBriefedShapeAndShardsIntoSeveralFiles()
    {
        var m = SyntheticCheckpointOptions.Preset("maverick-h2048");
        m.Validate();
        Assert.Equal((2048, 16, 4, 128, 8, 2), (m.HiddenSize, m.NumHeads, m.NumKvHeads, m.HeadDim, m.NumLayers, m.InterleaveMoeLayerStep));
        Assert.Equal((16, 1, 4096, 8192, 8192, true), (m.NumExperts, m.TopK, m.IntermediateSize, m.IntermediateSizeMlp, m.VocabSize, m.UseQkNorm));
        Assert.InRange(m.TotalBytes, 4.0e9, 4.2e9);
        var specs = CheckpointReader.RequiredTensors(m.ToConfig()).Select(t => new SafetensorsTensorSpec(t.Name, DType.BF16, t.Shape)).ToArray();
        Assert.True(ShardedSafetensorsWriter.PlanShards(specs, m.MaxShardBytes).Count > 1);
        Assert.Equal(Llama4ConfigParser.ToJson(m.ToConfig()), Llama4ConfigParser.ToJson(Llama4ConfigParser.Parse(Llama4ConfigParser.ToJson(m.ToConfig()), "x")));
    }

    [Fact]
    public void WithOverrides_AppliesCliValues()
    {
        var o = SyntheticCheckpointOptions.Preset("maverick-h2048").WithOverrides(new Dictionary<string, string>
        {
            ["hidden"] = "1024",
            ["layers"] = "4",
            ["kv-heads"] = "8",
            ["qk-norm"] = "off",
            ["max-shard-bytes"] = "512MiB",
            ["rope-theta"] = "10000.5",
            ["seed"] = "18446744073709551615",
            ["tie-embeddings"] = "true",
        });
        Assert.Equal(1024, o.HiddenSize);
        Assert.Equal(4, o.NumLayers);
        Assert.Equal(8, o.NumKvHeads);
        Assert.False(o.UseQkNorm);
        Assert.Equal(512L << 20, o.MaxShardBytes);
        Assert.Equal(10000.5, o.RopeTheta);
        Assert.Equal(ulong.MaxValue, o.Seed);
        Assert.True(o.TieWordEmbeddings);
        Assert.Equal(2048, SyntheticCheckpointOptions.Preset("maverick-h2048").HiddenSize);
        Assert.Equal(18, SyntheticCheckpointOptions.OverrideKeys.Count);
    }

    [Theory]
    [InlineData("bogus", "1", "unknown synthetic checkpoint option 'bogus'")]
    [InlineData("hidden", "wide", "option 'hidden' must be an integer, got 'wide'")]
    [InlineData("hidden", "0", "option 'hidden' must be a positive integer, got 0")]
    [InlineData("kv-heads", "5", "option 'kv-heads' must divide 'heads' (16), got 5")]
    [InlineData("head-dim", "127", "option 'head-dim' must be even")]
    [InlineData("top-k", "17", "option 'top-k' must not exceed 'experts' (16), got 17")]
    [InlineData("interleave", "9", "option 'interleave' must not exceed 'layers' (8)")]
    [InlineData("vocab", "3", "option 'vocab' must be at least 4")]
    [InlineData("qk-norm", "maybe", "option 'qk-norm' must be true or false")]
    [InlineData("rope-theta", "-1", "option 'rope-theta' must be a positive finite number")]
    [InlineData("seed", "-1", "option 'seed' must be an unsigned 64-bit integer")]
    [InlineData("max-shard-bytes", "0", "option 'max-shard-bytes' must be a positive byte count")]
    [InlineData("max-shard-bytes", "99999999999GiB", "option 'max-shard-bytes' must be a positive byte count")]
    [InlineData("chunk-size", "-16", "option 'chunk-size' must be a positive integer")]
    public void WithOverrides_InvalidValue_NamesTheOption(string key, string value, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            SyntheticCheckpointOptions.Preset("maverick-h2048").WithOverrides(new Dictionary<string, string> { [key] = value }));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Preset_Unknown_ListsKnownPresets()
    {
        var ex = Assert.Throws<ArgumentException>(() => SyntheticCheckpointOptions.Preset("llama-70b"));
        Assert.Contains("tiny, maverick-h2048", ex.Message);
    }
}
