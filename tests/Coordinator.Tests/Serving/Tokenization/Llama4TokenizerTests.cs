using System.Text.RegularExpressions;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

[Trait("Category", "Unit")]
public sealed class Llama4TokenizerTests
{
    private static Llama4Tokenizer Tokenizer => TokenizerTestModels.Maverick;

    [Theory]
    [InlineData("Hello world")]
    [InlineData("The experts answer the user.")]
    [InlineData("  leading and trailing spaces  ")]
    [InlineData("line one\nline two\r\n\n\ttabbed\n")]
    [InlineData("It's THE'S we've they'RE I'LL")]
    [InlineData("12345 3.14159 -7e10 0x1F")]
    [InlineData("a/b/c\n/d !!! ???   x")]
    [InlineData("{\"json\": [1, 2, 3]}")]
    [InlineData("")]
    public void Encode_Ascii_RoundTrips(string text)
    {
        int[] ids = Tokenizer.Encode(text);

        Assert.Equal(text, Tokenizer.Decode(ids));
        Assert.All(ids, id => Assert.InRange(id, 0, TinyTokenizerGenerator.BpeTokenCount - 1));
    }

    [Theory]
    [InlineData("héllo wörld, ça va?")]
    [InlineData("😀 emoji 👍🏽 with skin tone and 👨‍👩‍👧 family")]
    [InlineData("中文字 日本語のテキスト 한국어")]
    [InlineData("𠀀𠀁abc 𝐀𝐁c astral letters")]
    [InlineData("e\u0301 combining acute, \u00a0nbsp, \u3000ideographic space, \u200bzero width")]
    [InlineData("😀a")]
    public void Encode_MultiByteUtf8_RoundTrips(string text)
    {
        int[] ids = Tokenizer.Encode(text);

        Assert.Equal(text, Tokenizer.Decode(ids));
        Assert.Equal(text, Tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    /// <summary>
    /// Ids the Hugging Face <c>tokenizers</c> library (Rust, through Tokenizers.DotNet 1.4.1) produced for
    /// tests/fixtures/tiny-maverick/tokenizer.json, its post-processor's leading BOS removed. They pin agreement with
    /// the reference implementation: split on code points, whole-piece lookup, merge ranks, added tokens. Regenerating
    /// the fixture's tokenizer changes them; recompute them then with the reference library.
    /// </summary>
    public static TheoryData<string, int[]> HuggingFaceEncodings => new()
    {
        { "Hello world", [72, 101, 281, 111, 267, 290, 108, 100] },
        { "The experts answer the user.\n\nThanks!", [304, 393, 471, 259, 467, 379, 279, 10, 84, 104, 275, 370, 33] },
        { "It's THE'S we've I'LL", [73, 116, 405, 32, 84, 72, 69, 39, 83, 267, 101, 39, 309, 470, 76, 76] },
        { "12345 3.14", [49, 50, 51, 52, 53, 32, 51, 46, 49, 52] },
        { "😀a 😀 a😀b", [240, 159, 152, 128, 97, 32, 240, 159, 152, 128, 258, 240, 159, 152, 128, 98] },
        { "𠀀𠀁abc 𝐀𝐁c", [240, 160, 128, 128, 240, 160, 128, 129, 97, 98, 99, 32, 240, 157, 144, 128, 240, 157, 144, 129, 99] },
        { "héllo 中文", [104, 195, 169, 281, 111, 32, 228, 184, 173, 230, 150, 135] },
        { "x<|eot|>y<|header_start|>user<|header_end|>\n\nhi", [120, 507, 121, 505, 117, 379, 506, 10, 10, 104, 105] },
        { "  \n  \n\tindent", [32, 32, 10, 32, 32, 10, 9, 105, 262, 365] },
        { "a/b/c\n/d !!! ???", [97, 47, 98, 47, 99, 10, 47, 100, 32, 33, 33, 33, 32, 63, 63, 63] },
    };

    [Theory]
    [MemberData(nameof(HuggingFaceEncodings))]
    public void Encode_MatchesHuggingFaceTokenizers(string text, int[] expected)
    {
        Assert.Equal(expected, Tokenizer.Encode(text));
        Assert.Equal(text, Tokenizer.Decode(expected));
    }

    [Fact]
    public void Encode_CommonWord_IsOneLearntToken()
    {
        int[] ids = Tokenizer.Encode(" the");

        Assert.Single(ids);
        Assert.InRange(ids[0], 256, TinyTokenizerGenerator.BpeTokenCount - 1);
    }

    [Fact]
    public void Encode_UnknownCharacter_FallsBackToByteTokens()
    {
        int[] ids = Tokenizer.Encode("中");

        Assert.Equal([0xE4, 0xB8, 0xAD], ids);
    }

    [Fact]
    public void Encode_Digits_NeverMergeAcrossGroupsOfThree()
    {
        int[] ids = Tokenizer.Encode("1234567");
        var tokenEnds = new List<int>();
        int position = 0;
        foreach (int id in ids)
        {
            position += Tokenizer.GetTokenBytes(id).Length;
            tokenEnds.Add(position);
        }

        Assert.Equal("1234567", Tokenizer.Decode(ids));
        Assert.Contains(3, tokenEnds);
        Assert.Contains(6, tokenEnds);
    }

    [Fact]
    public void Encode_AddBos_PrependsBeginOfText()
    {
        Assert.Equal([500], Tokenizer.Encode("", addBos: true));
        int[] ids = Tokenizer.Encode("hi", addBos: true);
        Assert.Equal(500, ids[0]);
        Assert.Equal(Tokenizer.Encode("hi"), ids[1..]);
    }

    [Theory]
    [InlineData("<|eot|>", 507)]
    [InlineData("<|begin_of_text|>", 500)]
    [InlineData("<|header_start|>", 505)]
    [InlineData("<|header_end|>", 506)]
    [InlineData("<|finetune_right_pad|>", 511)]
    [InlineData("<|end_of_text|>", 496)]
    [InlineData("<|eom|>", 497)]
    public void Encode_SpecialTokenText_IsItsSingleId(string token, int id)
    {
        Assert.Equal([id], Tokenizer.Encode(token));
        Assert.Equal(id, Tokenizer.GetSpecialTokenId(token));
        Assert.True(Tokenizer.IsSpecialToken(id));
        Assert.Equal(token, Tokenizer.Decode([id]));
    }

    [Fact]
    public void Encode_SpecialTokensInsideText_AreCutOutAndSurroundingTextEncodedAlone()
    {
        int[] ids = Tokenizer.Encode("x<|eot|>y<|header_start|>user<|header_end|>");

        int[] expected = [.. Tokenizer.Encode("x"), 507, .. Tokenizer.Encode("y"), 505, .. Tokenizer.Encode("user"), 506];
        Assert.Equal(expected, ids);
    }

    [Fact]
    public void Encode_SpecialTokensNotParsed_StaysOrdinaryText()
    {
        int[] ids = Tokenizer.Encode("say <|eot|> now", parseSpecialTokens: false);

        Assert.DoesNotContain(ids, Tokenizer.IsSpecialToken);
        Assert.Equal("say <|eot|> now", Tokenizer.Decode(ids));
        Assert.Equal("say <|eot|> now", Tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void Decode_SkipSpecialTokens_DropsOnlySpecialTokens()
    {
        int[] ids = Tokenizer.Encode("<|begin_of_text|><|header_start|>assistant<|header_end|>\n\nHi there!<|eot|>");

        Assert.Equal("assistant\n\nHi there!", Tokenizer.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("<|begin_of_text|><|header_start|>assistant<|header_end|>\n\nHi there!<|eot|>", Tokenizer.Decode(ids));
    }

    [Theory]
    [InlineData(new[] { 0xC3 }, "\uFFFD")]
    [InlineData(new[] { 0xF0, 0x9F, 0x98 }, "\uFFFD")]
    [InlineData(new[] { 0xE4, 0x41 }, "\uFFFDA")]
    [InlineData(new[] { 0xFF, 0xFE, 0x41 }, "\uFFFD\uFFFDA")]
    [InlineData(new[] { 0xC0, 0xAF }, "\uFFFD\uFFFD")]
    [InlineData(new[] { 0xED, 0xA0, 0x80 }, "\uFFFD\uFFFD\uFFFD")]
    [InlineData(new[] { 0x41, 0xA9, 0x42 }, "A\uFFFDB")]
    public void Decode_InvalidUtf8_BecomesReplacementCharacters(int[] ids, string expected)
    {
        Assert.Equal(expected, Tokenizer.Decode(ids));
    }

    [Fact]
    public void Decode_SkippedSpecialTokenInsideCharacter_JoinsTheBytes()
    {
        Assert.Equal("é", Tokenizer.Decode([0xC3, 507, 0xA9], skipSpecialTokens: true));
        Assert.Equal("\uFFFD<|eot|>\uFFFD", Tokenizer.Decode([0xC3, 507, 0xA9]));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(512)]
    [InlineData(int.MaxValue)]
    public void Decode_IdOutsideVocabulary_ThrowsNamingTheId(int id)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Tokenizer.Decode([65, id]));

        Assert.Contains($"Token id {id}", e.Message);
        Assert.Contains("[0, 512)", e.Message);
        Assert.False(Tokenizer.IsSpecialToken(id));
    }

    [Fact]
    public void Encode_UnpairedSurrogate_EncodesReplacementCharacter()
    {
        Assert.Equal("a\uFFFDb\uFFFD", Tokenizer.Decode(Tokenizer.Encode("a\uD800b\uDC00")));
    }

    [Fact]
    public void SpecialTokenLookup_UnknownName_IsReported()
    {
        var e = Assert.Throws<KeyNotFoundException>(() => Tokenizer.GetSpecialTokenId("<|nope|>"));
        Assert.Contains("<|nope|>", e.Message);
        Assert.False(Tokenizer.TryGetSpecialTokenId("hello", out _));
        Assert.True(Tokenizer.TryGetSpecialTokenId("<|eot|>", out int eot));
        Assert.Equal(507, eot);
    }

    [Fact]
    public void Eos_IncludesEndOfTurnAndConfigIds()
    {
        Assert.True(Tokenizer.IsEos(507));
        Assert.True(Tokenizer.IsEos(496));
        Assert.True(Tokenizer.IsEos(497));
        Assert.False(Tokenizer.IsEos(500));
        Assert.False(Tokenizer.IsEos(65));
    }

    [Fact]
    public void Encode_IgnoreMerges_UsesWholePieceFromVocabulary()
    {
        // Merges rank b+c before a+b, so BPE yields a + bc and never forms abc from them; abc exists via ab+c.
        (string, string)[] merges = [("b", "c"), ("a", "b"), ("ab", "c")];
        string ignoring = TokenizerTestModels.WriteSynthetic(TokenizerTestModels.TempDirectory(), merges, ignoreMerges: true);
        string merging = TokenizerTestModels.WriteSynthetic(TokenizerTestModels.TempDirectory(), merges, ignoreMerges: false);
        try
        {
            var whole = Llama4Tokenizer.Load(ignoring);
            var byMerges = Llama4Tokenizer.Load(merging);

            Assert.Equal(new[] { 258 }, whole.Encode("abc"));
            Assert.Equal(new[] { 'a', 256 }, byMerges.Encode("abc"));
            Assert.Equal(new[] { 'x', 257 }, whole.Encode("xab"));
        }
        finally
        {
            Directory.Delete(ignoring, recursive: true);
            Directory.Delete(merging, recursive: true);
        }
    }

    [Fact]
    public void Encode_MergesWrittenAsStrings_MatchArrayForm()
    {
        (string, string)[] merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")];
        string arrays = TokenizerTestModels.WriteSynthetic(TokenizerTestModels.TempDirectory(), merges, ignoreMerges: false);
        string strings = TokenizerTestModels.WriteSynthetic(
            TokenizerTestModels.TempDirectory(), merges, ignoreMerges: false, mergesAsStrings: true);
        try
        {
            int[] expected = Llama4Tokenizer.Load(arrays).Encode("the theme");
            Assert.Equal(expected, Llama4Tokenizer.Load(strings).Encode("the theme"));
            Assert.Contains(258, expected);
        }
        finally
        {
            Directory.Delete(arrays, recursive: true);
            Directory.Delete(strings, recursive: true);
        }
    }

    [Theory]
    [InlineData("😀a", new[] { "😀a" })]
    [InlineData("𠀀𠀁abc", new[] { "𠀀𠀁abc" })]
    [InlineData("Hello, world!", new[] { "Hello", ",", " world", "!" })]
    [InlineData("It's 2025.\n\nNext", new[] { "It's", " ", "202", "5", ".\n\n", "Next" })]
    [InlineData("a  b", new[] { "a", " ", " b" })]
    public void PreTokenizer_SplitsOnCodePointsLikeHuggingFace(string text, string[] expected)
    {
        var splitter = new PreTokenizerSplitter(new Regex(TinyTokenizerGenerator.Llama4SplitPattern), keepGaps: true);
        var pieces = new List<(int Start, int Length)>();

        splitter.Split(text, pieces);

        Assert.Equal(expected, pieces.Select(p => text.Substring(p.Start, p.Length)));
    }

    [Fact]
    public void PreTokenizer_Isolated_KeepsTextBetweenMatches()
    {
        var isolated = new PreTokenizerSplitter(new Regex("[a-z]+"), keepGaps: true);
        var removed = new PreTokenizerSplitter(new Regex("[a-z]+"), keepGaps: false);
        var a = new List<(int Start, int Length)>();
        var b = new List<(int Start, int Length)>();

        isolated.Split("AB cd😀EF", a);
        removed.Split("AB cd😀EF", b);

        Assert.Equal([(0, 3), (3, 2), (5, 4)], a);
        Assert.Equal([(3, 2)], b);
    }

    [Fact]
    public void EncodeDecode_ConcurrentCalls_GiveTheSameResults()
    {
        string[] texts = [.. Enumerable.Range(0, 64).Select(i => $"Request {i}: the experts say 😀 {i * 7919} times.")];
        int[][] expected = [.. texts.Select(t => Tokenizer.Encode(t))];

        Parallel.For(0, 256, i =>
        {
            int k = i % texts.Length;
            Assert.Equal(expected[k], Tokenizer.Encode(texts[k]));
            Assert.Equal(texts[k], Tokenizer.Decode(expected[k]));
        });
    }
}
