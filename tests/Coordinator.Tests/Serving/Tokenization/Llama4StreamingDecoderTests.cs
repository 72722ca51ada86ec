using System.Text;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

[Trait("Category", "Unit")]
public sealed class Llama4StreamingDecoderTests
{
    private static Llama4Tokenizer Tokenizer => TokenizerTestModels.Maverick;

    [Fact]
    public void Append_TwoByteCharacterSplitOverTokens_EmitsItWhole()
    {
        var decoder = Tokenizer.CreateStreamingDecoder();

        Assert.Equal("", decoder.Append(0xC3));
        Assert.True(decoder.HasIncompleteCharacter);
        Assert.Equal("é", decoder.Append(0xA9));
        Assert.False(decoder.HasIncompleteCharacter);
        Assert.Equal("", decoder.Flush());
    }

    [Fact]
    public void Append_EmojiSplitOverFourTokens_EmitsBothSurrogatesTogether()
    {
        var decoder = Tokenizer.CreateStreamingDecoder();

        Assert.Equal("", decoder.Append(0xF0));
        Assert.Equal("", decoder.Append(0x9F));
        Assert.Equal("", decoder.Append(0x98));
        Assert.Equal("😀", decoder.Append(0x80));
        Assert.Equal(4, decoder.TokenCount);
    }

    [Fact]
    public void Append_SequenceThatCannotComplete_EmitsReplacementAtOnce()
    {
        var decoder = Tokenizer.CreateStreamingDecoder();

        Assert.Equal("", decoder.Append(0xE4));
        Assert.Equal("\uFFFDA", decoder.Append('A'));
        Assert.Equal("\uFFFD", decoder.Append(0xFF));
        Assert.Equal("\uFFFD", decoder.Append(0xA9));
    }

    [Fact]
    public void Flush_TruncatedCharacterAtEnd_BecomesReplacement()
    {
        var decoder = Tokenizer.CreateStreamingDecoder();

        Assert.Equal("ok", decoder.Append('o') + decoder.Append('k'));
        Assert.Equal("", decoder.Append(0xF0) + decoder.Append(0x9F));
        Assert.Equal("\uFFFD", decoder.Flush());
        Assert.False(decoder.HasIncompleteCharacter);
        Assert.Equal(0, decoder.TokenCount);
        Assert.Equal("x", decoder.Append('x'));
    }

    [Fact]
    public void Append_SpecialTokens_SkippedOrSpelledOut()
    {
        var skipping = Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        var keeping = Tokenizer.CreateStreamingDecoder(skipSpecialTokens: false);

        Assert.Equal("", skipping.Append(507));
        Assert.Equal("<|eot|>", keeping.Append(507));
        Assert.True(skipping.SkipSpecialTokens);
        Assert.False(keeping.SkipSpecialTokens);
    }

    [Fact]
    public void Append_SkippedSpecialTokenInsideCharacter_DoesNotBreakIt()
    {
        var decoder = Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);

        Assert.Equal("", decoder.Append(0xC3));
        Assert.Equal("", decoder.Append(507));
        Assert.Equal("é", decoder.Append(0xA9));
    }

    [Fact]
    public void Append_IdOutsideVocabulary_Throws()
    {
        var decoder = Tokenizer.CreateStreamingDecoder();

        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Append(512));
        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Append(-3));
        Assert.Equal(0, decoder.TokenCount);
    }

    [Theory]
    [InlineData("héllo 😀 世界, 𠀀 and ça!")]
    [InlineData("The experts answer: 42.\n")]
    public void Append_EncodedText_EveryChunkIsWholeCharactersAndTheyJoinToTheText(string text)
    {
        int[] ids = [.. Tokenizer.Encode(text).SelectMany(id => id >= 256 ? ByteTokens(id) : [id])];
        var decoder = Tokenizer.CreateStreamingDecoder();
        var joined = new StringBuilder();

        foreach (int id in ids)
        {
            string chunk = decoder.Append(id);
            Assert.DoesNotContain('\uFFFD', chunk);
            Assert.True(chunk.Length == 0 || !char.IsHighSurrogate(chunk[^1]), "chunk ends inside a surrogate pair");
            Assert.True(chunk.Length == 0 || !char.IsLowSurrogate(chunk[0]), "chunk starts inside a surrogate pair");
            joined.Append(chunk);
        }

        joined.Append(decoder.Flush());
        Assert.Equal(text, joined.ToString());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AppendThenFlush_RandomIds_EqualsDecode(bool skipSpecialTokens)
    {
        var random = new Random(20250401);
        for (int round = 0; round < 300; round++)
        {
            int[] ids = new int[random.Next(0, 24)];
            for (int i = 0; i < ids.Length; i++)
            {
                // Mostly raw bytes (lead and continuation bytes mix freely), some merges and specials.
                ids[i] = random.Next(10) switch
                {
                    < 6 => random.Next(0x80, 0x100),
                    < 8 => random.Next(0, 0x80),
                    8 => random.Next(256, 496),
                    _ => random.Next(496, 512),
                };
            }

            var decoder = Tokenizer.CreateStreamingDecoder(skipSpecialTokens);
            var streamed = new StringBuilder();
            foreach (int id in ids)
            {
                streamed.Append(decoder.Append(id));
            }

            streamed.Append(decoder.Flush());
            Assert.Equal(Tokenizer.Decode(ids, skipSpecialTokens), streamed.ToString());
        }
    }

    private static int[] ByteTokens(int id) => [.. Tokenizer.GetTokenBytes(id).ToArray().Select(b => (int)b)];
}
