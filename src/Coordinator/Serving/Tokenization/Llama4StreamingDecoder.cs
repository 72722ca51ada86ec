using System.Text;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// Turns one sequence's generated token ids into text as they arrive, for streaming (SSE): a character is emitted only
/// once all of its UTF-8 bytes have arrived, so a multi-byte character split over several byte tokens is never sent in
/// halves. A byte sequence that can no longer become valid UTF-8 is emitted as U+FFFD as soon as that is certain, and
/// a truncated sequence left at the end becomes U+FFFD in <see cref="Flush"/>. The texts returned by
/// <see cref="Append"/> followed by <see cref="Flush"/> concatenate to exactly
/// <see cref="Llama4Tokenizer.Decode"/> of the same ids. One instance per sequence; not thread-safe.
/// </summary>
public sealed class Llama4StreamingDecoder
{
    private readonly Llama4Tokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false)
        .GetDecoder();
    private char[] _chars = new char[64];

    internal Llama4StreamingDecoder(Llama4Tokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        SkipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>True when special tokens produce no text (their bytes are not fed to the UTF-8 decoder).</summary>
    public bool SkipSpecialTokens { get; }

    /// <summary>Number of ids appended so far.</summary>
    public int TokenCount { get; private set; }

    /// <summary>True when the bytes of a character that is not complete yet are waiting for the next token.</summary>
    public bool HasIncompleteCharacter => _utf8.GetCharCount([], flush: true) > 0;

    /// <summary>
    /// Adds the next generated id and returns the text it completes: possibly empty (a character's bytes are still
    /// incomplete, or a skipped special token), possibly also characters that earlier tokens started.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is negative or not below the vocabulary size.</exception>
    public string Append(int tokenId)
    {
        ReadOnlySpan<byte> bytes = _tokenizer.GetTokenBytes(tokenId);
        TokenCount++;
        if (SkipSpecialTokens && _tokenizer.IsSpecialToken(tokenId))
        {
            return string.Empty;
        }

        return Convert(bytes, flush: false);
    }

    /// <summary>
    /// Ends the sequence: returns U+FFFD for bytes of a character that never completed (empty when none) and resets
    /// the decoder so the instance could start a new sequence.
    /// </summary>
    public string Flush()
    {
        string text = Convert([], flush: true);
        TokenCount = 0;
        return text;
    }

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int needed = _utf8.GetCharCount(bytes, flush);
        if (needed == 0)
        {
            // Still feed the bytes: they may start a character that a later token completes.
            _utf8.GetChars(bytes, [], flush);
            return string.Empty;
        }

        if (_chars.Length < needed)
        {
            _chars = new char[Math.Max(needed, _chars.Length * 2)];
        }

        int written = _utf8.GetChars(bytes, _chars, flush);
        return new string(_chars, 0, written);
    }
}
