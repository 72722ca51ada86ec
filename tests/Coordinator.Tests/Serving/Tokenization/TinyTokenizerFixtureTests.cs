using System.Text.Json;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

[Trait("Category", "Unit")]
public sealed class TinyTokenizerFixtureTests
{
    public static TheoryData<string> Fixtures => new(TinyTokenizerGenerator.FixtureNames);

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void CommittedFiles_EqualGeneratorOutput(string fixture)
    {
        string directory = TestPaths.Fixture(fixture);
        (string tokenizerJson, string tokenizerConfigJson) = TinyTokenizerGenerator.Generate(directory);
        string tokenizerPath = Path.Combine(directory, Llama4Tokenizer.TokenizerFileName);
        string configPath = Path.Combine(directory, Llama4Tokenizer.TokenizerConfigFileName);
        if (Environment.GetEnvironmentVariable("TINY_TOKENIZER_REGENERATE") == "1")
        {
            File.WriteAllText(tokenizerPath, tokenizerJson);
            File.WriteAllText(configPath, tokenizerConfigJson);
        }

        Assert.True(File.Exists(tokenizerPath), $"{tokenizerPath} is missing; regenerate (see TinyTokenizerGenerator).");
        Assert.True(tokenizerJson == File.ReadAllText(tokenizerPath),
            $"{tokenizerPath} differs from TinyTokenizerGenerator's output; regenerate with TINY_TOKENIZER_REGENERATE=1.");
        Assert.True(tokenizerConfigJson == File.ReadAllText(configPath),
            $"{configPath} differs from TinyTokenizerGenerator's output; regenerate with TINY_TOKENIZER_REGENERATE=1.");
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Load_AgreesWithConfigIds(string fixture)
    {
        string directory = TestPaths.Fixture(fixture);
        using JsonDocument configDocument = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "config.json")));
        JsonElement config = configDocument.RootElement.TryGetProperty("text_config", out JsonElement text)
            ? text
            : configDocument.RootElement;
        using JsonDocument generation = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "generation_config.json")));

        var tokenizer = Llama4Tokenizer.Load(directory);

        Assert.Equal(config.GetProperty("vocab_size").GetInt32(), tokenizer.VocabSize);
        Assert.Equal(config.GetProperty("bos_token_id").GetInt32(), tokenizer.BosTokenId);
        Assert.Equal(tokenizer.BosTokenId, tokenizer.GetSpecialTokenId("<|begin_of_text|>"));
        Assert.Equal(config.GetProperty("pad_token_id").GetInt32(), tokenizer.PadTokenId);
        Assert.Equal(tokenizer.PadTokenId, tokenizer.GetSpecialTokenId("<|finetune_right_pad|>"));
        int[] configEos = [.. config.GetProperty("eos_token_id").EnumerateArray().Select(e => e.GetInt32())];
        int[] generationEos = [.. generation.RootElement.GetProperty("eos_token_id").EnumerateArray().Select(e => e.GetInt32())];
        Assert.Equal(configEos.Order(), tokenizer.EosTokenIds.Order());
        Assert.Equal(generationEos.Order(), tokenizer.EosTokenIds.Order());
        Assert.Equal(507, tokenizer.EndOfTurnTokenId);
        Assert.Contains(tokenizer.EndOfTurnTokenId, tokenizer.EosTokenIds);
        Assert.All(tokenizer.EosTokenIds, id => Assert.True(tokenizer.IsSpecialToken(id), $"eos id {id} is not special"));
        string[] eosNames = [.. tokenizer.EosTokenIds.Select(id => tokenizer.SpecialTokens.Single(s => s.Value == id).Key).Order()];
        Assert.Equal(["<|end_of_text|>", "<|eom|>", "<|eot|>"], eosNames);
        Assert.Equal(16, tokenizer.SpecialTokens.Count);
        Assert.All(tokenizer.SpecialTokens.Values, id => Assert.InRange(id, 496, 511));
        bool vision = File.Exists(Path.Combine(directory, "golden_vision.json"));
        Assert.Equal(vision ? 501 : 505, tokenizer.HeaderStartTokenId);
        Assert.Equal(vision ? 509 : 506, tokenizer.HeaderEndTokenId);
        Assert.NotNull(tokenizer.ChatTemplateSource);

        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            Assert.False(tokenizer.GetTokenBytes(id).IsEmpty, $"id {id} has no token");
        }
    }

    [Fact]
    public void MultimodalFixture_ImageIndicesNameImageTokens()
    {
        string directory = TestPaths.Fixture("tiny-maverick-mm");
        using JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "config.json")));
        var tokenizer = Llama4Tokenizer.Load(directory);

        Assert.Equal(config.RootElement.GetProperty("boi_token_index").GetInt32(), tokenizer.GetSpecialTokenId("<|image_start|>"));
        Assert.Equal(config.RootElement.GetProperty("eoi_token_index").GetInt32(), tokenizer.GetSpecialTokenId("<|image_end|>"));
        Assert.Equal(config.RootElement.GetProperty("image_token_index").GetInt32(), tokenizer.GetSpecialTokenId("<|patch|>"));
    }

    [Fact]
    public void MultimodalFixture_ImageTokensAreWhereTheVisionGoldenPutsThem()
    {
        var tokenizer = Llama4Tokenizer.Load(TestPaths.Fixture("tiny-maverick-mm"));
        Assert.Equal(505, tokenizer.GetSpecialTokenId("<|tile_x_separator|>"));
        Assert.Equal(506, tokenizer.GetSpecialTokenId("<|tile_y_separator|>"));
        Assert.Equal(508, tokenizer.GetSpecialTokenId("<|image|>"));
        var layout = TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [507, 496, 497],
            new Dictionary<int, string> { [505] = "<|tile_x_separator|>", [506] = "<|tile_y_separator|>", [508] = "<|image|>" });
        Assert.Equal(Enumerable.Range(496, 16), layout.Keys);
        Assert.Equal(16, layout.Values.Distinct().Count());
        Assert.Equal(("<|header_start|>", "<|header_end|>"), (layout[501], layout[509]));
    }

    [Fact]
    public void Fixtures_ShareTheBpeVocabulary()
    {
        var reference = Llama4Tokenizer.Load(TestPaths.Fixture("tiny-maverick"));
        const string text = "The experts answer the user: \"It's 42 degrees!\"\n";
        int[] expected = reference.Encode(text);
        foreach (string fixture in TinyTokenizerGenerator.FixtureNames)
        {
            Assert.Equal(expected, Llama4Tokenizer.Load(TestPaths.Fixture(fixture)).Encode(text));
        }

        Assert.All(expected, id => Assert.InRange(id, 0, TinyTokenizerGenerator.BpeTokenCount - 1));
    }

    [Fact]
    public void LearnBpe_IsDeterministicAndFillsTheBpeRange()
    {
        (List<string> vocab, List<(string Left, string Right)> merges) = TinyTokenizerGenerator.LearnBpe();
        (List<string> again, _) = TinyTokenizerGenerator.LearnBpe();

        Assert.Equal(TinyTokenizerGenerator.BpeTokenCount, vocab.Count);
        Assert.Equal(vocab, again);
        Assert.True(merges.Count >= TinyTokenizerGenerator.BpeTokenCount - 256);
        Assert.Contains("Ġthe", vocab);
    }

    [Fact]
    public void SpecialTokenLayout_DiffersOnlyInEosSlots()
    {
        var maverick = TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [507, 496, 497]);
        var scout = TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [507, 508, 497]);
        var longContext = TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [501, 507, 508]);

        Assert.Equal("<|end_of_text|>", maverick[496]);
        Assert.Equal("<|eom|>", maverick[497]);
        Assert.Equal("<|end_of_text|>", scout[508]);
        Assert.Equal("<|eom|>", scout[497]);
        Assert.Equal("<|end_of_text|>", longContext[501]);
        Assert.Equal("<|eom|>", longContext[508]);
        foreach (var layout in new[] { maverick, scout, longContext })
        {
            Assert.Equal(Enumerable.Range(496, 16), layout.Keys);
            Assert.Equal(16, layout.Values.Distinct().Count());
        }

        Assert.Throws<InvalidOperationException>(() => TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [496, 497]));
        Assert.Throws<InvalidOperationException>(() => TinyTokenizerGenerator.SpecialTokenLayout(500, 511, [507, 505]));
        Assert.Throws<InvalidOperationException>(() => TinyTokenizerGenerator.SpecialTokenLayout(1, 511, [507]));
    }
}
