using System.Text.Json.Nodes;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

[Trait("Category", "Unit")]
public sealed class Llama4TokenizerLoadTests
{
    [Fact]
    public void Load_MissingDirectory_NamesIt()
    {
        string directory = TokenizerTestModels.TempDirectory();

        var e = Assert.Throws<TokenizerException>(() => Llama4Tokenizer.Load(directory));

        Assert.Contains(directory, e.Message);
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void Load_MissingTokenizerJson_NamesTheFile()
    {
        using var model = new TokenizerTestModels.EditableModel();
        File.Delete(model.PathOf("tokenizer.json"));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains(model.PathOf("tokenizer.json"), e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void Load_MissingConfigJson_NamesTheFile()
    {
        using var model = new TokenizerTestModels.EditableModel();
        File.Delete(model.PathOf("config.json"));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("config.json not found", e.Message);
    }

    [Theory]
    [InlineData("tokenizer.json")]
    [InlineData("tokenizer_config.json")]
    [InlineData("config.json")]
    [InlineData("generation_config.json")]
    public void Load_MalformedJson_NamesTheFile(string file)
    {
        using var model = new TokenizerTestModels.EditableModel();
        File.WriteAllText(model.PathOf(file), "{\"model\": {\"vocab\": ");

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains(model.PathOf(file), e.Message);
        Assert.Contains("malformed JSON", e.Message);
    }

    [Fact]
    public void Load_WithoutOptionalFiles_UsesConfigIds()
    {
        using var model = new TokenizerTestModels.EditableModel();
        File.Delete(model.PathOf("tokenizer_config.json"));
        File.Delete(model.PathOf("generation_config.json"));

        var tokenizer = model.Load();

        Assert.Equal(500, tokenizer.BosTokenId);
        Assert.Equal([496, 497, 507], tokenizer.EosTokenIds.Order());
        Assert.Null(tokenizer.ChatTemplateSource);
    }

    [Fact]
    public void Load_AddedTokenIdAtVocabSize_NamesTokenAndLimit()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["added_tokens"]![0]!["id"] = 512);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("'<|end_of_text|>' has id 512", e.Message);
        Assert.Contains("[0, 512)", e.Message);
        Assert.Contains("vocab_size", e.Message);
    }

    [Fact]
    public void Load_SmallerModelVocabulary_NamesTheFirstTokenThatDoesNotFit()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("config.json", root => root["vocab_size"] = 400);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("model.vocab token", e.Message);
        Assert.Contains("[0, 400)", e.Message);
    }

    [Fact]
    public void Load_EosIdNotInVocabulary_NamesIt()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("generation_config.json", root => root["eos_token_id"] = new JsonArray(507, 900));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("eos_token_id 900", e.Message);
    }

    [Fact]
    public void Load_BosThatIsNotBeginOfText_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("config.json", root => root["bos_token_id"] = 505);
        model.Edit("generation_config.json", root => root["bos_token_id"] = 505);
        model.Edit("tokenizer_config.json", root => root["bos_token"] = "<|header_start|>");

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("bos_token_id 505 is not <|begin_of_text|>", e.Message);
    }

    [Fact]
    public void Load_FilesDisagreeOnBos_NamesBoth()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("generation_config.json", root => root["bos_token_id"] = 501);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("generation_config.json: bos_token_id 501 disagrees", e.Message);
    }

    [Fact]
    public void Load_PadTokenDisagreement_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer_config.json", root => root["pad_token"] = "<|eot|>");

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("pad_token is id 507", e.Message);
    }

    [Fact]
    public void Load_MissingChatSpecialToken_NamesIt()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["added_tokens"]!.AsArray().RemoveAt(9));
        model.Edit("tokenizer_config.json", root => root["added_tokens_decoder"]!.AsObject().Remove("505"));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("'<|header_start|>' is missing", e.Message);
    }

    [Fact]
    public void Load_AddedTokensDecoderMismatch_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer_config.json", root => root["added_tokens_decoder"]!["507"]!["content"] = "<|eom|>");

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("added_tokens_decoder['507'] is '<|eom|>'", e.Message);
    }

    [Fact]
    public void Load_NonLlama4ChatTemplate_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer_config.json", root => root["chat_template"] = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}");

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("chat_template is not a Llama 4 template", e.Message);
    }

    [Theory]
    [InlineData("normalizer", "{\"type\": \"NFC\"}", "'normalizer' is set")]
    [InlineData("decoder", "{\"type\": \"Metaspace\"}", "decoder.type 'Metaspace' is not supported")]
    [InlineData("pre_tokenizer", "{\"type\": \"Whitespace\"}", "pre_tokenizer.type 'Whitespace' is not supported")]
    [InlineData("pre_tokenizer", "{\"type\": \"ByteLevel\", \"add_prefix_space\": true}", "add_prefix_space true is not supported")]
    [InlineData("pre_tokenizer", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}", "not a valid regular expression")]
    [InlineData("pre_tokenizer", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"MergedWithNext\"}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}", "behavior 'MergedWithNext'")]
    public void Load_UnsupportedComponent_NamesTheField(string field, string json, string message)
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root[field] = JsonNode.Parse(json));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("byte_fallback", "true", "byte_fallback true")]
    [InlineData("type", "\"WordPiece\"", "model.type 'WordPiece'")]
    [InlineData("continuing_subword_prefix", "\"##\"", "continuing_subword_prefix")]
    [InlineData("ignore_merges", "\"yes\"", "ignore_merges must be true or false")]
    public void Load_UnsupportedModelOption_NamesIt(string field, string json, string message)
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["model"]![field] = JsonNode.Parse(json));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Load_MergeOfUnknownToken_NamesTheMerge()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["model"]!["merges"]!.AsArray().Add(new JsonArray("zz", "q")));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("model.merges[240] ('zz' + 'q') uses 'zz'", e.Message);
    }

    [Fact]
    public void Load_VocabularyMissingAByte_NamesTheByte()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["model"]!["vocab"]!.AsObject().Remove("Ā"));

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("no token for byte 0x00", e.Message);
    }

    [Fact]
    public void Load_DuplicateVocabularyId_NamesBothTokens()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["model"]!["vocab"]!["Ġthe"] = 65);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("gives id 65 to both 'A' and 'Ġthe'", e.Message);
    }

    [Fact]
    public void Load_VocabularyTokenOutsideByteAlphabet_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["model"]!["vocab"]!["▁sentencepiece"] = 495);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("outside the byte-level alphabet", e.Message);
    }

    [Fact]
    public void Load_AddedTokenWithStripFlag_IsRejected()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["added_tokens"]![3]!["lstrip"] = true);

        var e = Assert.Throws<TokenizerException>(model.Load);

        Assert.Contains("lstrip true is not supported", e.Message);
    }

    [Fact]
    public void Load_Gpt2StyleByteLevelPreTokenizer_IsAccepted()
    {
        using var model = new TokenizerTestModels.EditableModel();
        model.Edit("tokenizer.json", root => root["pre_tokenizer"] = JsonNode.Parse(
            "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}"));

        var tokenizer = model.Load();

        Assert.Equal("Hello, world! 😀", tokenizer.Decode(tokenizer.Encode("Hello, world! 😀")));
    }

    [Fact]
    public void Load_MultimodalConfig_ReadsTextConfig()
    {
        var tokenizer = Llama4Tokenizer.Load(TestPaths.Fixture("tiny-maverick-mm"));

        Assert.Equal(512, tokenizer.VocabSize);
        Assert.Equal(511, tokenizer.PadTokenId);
    }
}
