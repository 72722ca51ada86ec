using System.Buffers;
using System.Collections.Frozen;
using System.Diagnostics.CodeAnalysis;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// The tokenizer of a Llama 4 model directory: byte-level BPE from the Hugging Face <c>tokenizer.json</c> (merges run
/// by Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>), the Llama 4 special tokens, the model's BOS / EOS / pad
/// ids, and the Llama 4 chat format. Load it with <see cref="Load"/>.
/// </summary>
/// <remarks>
/// Encoding follows the <c>tokenizers</c> library for this kind of file: added tokens are cut out first (longest match
/// at the leftmost position), the rest is split by the pre-tokenizer pattern, and each piece is one vocabulary token
/// when <c>ignore_merges</c> is set and the whole piece is in the vocabulary, otherwise the BPE merges of its UTF-8
/// bytes. Decoding concatenates token bytes and decodes UTF-8 once, each invalid sequence becoming U+FFFD, as
/// <c>tokenizers</c>' ByteLevel decoder does; <c>clean_up_tokenization_spaces</c> is never applied, so text round-trips
/// byte for byte. Instances are immutable and safe to share between threads.
/// </remarks>
public sealed partial class Llama4Tokenizer
{
    /// <summary><c>&lt;|begin_of_text|&gt;</c>: the BOS token, first token of every prompt.</summary>
    public const string BeginOfTextToken = "<|begin_of_text|>";

    /// <summary><c>&lt;|header_start|&gt;</c>: opens a chat message's role header.</summary>
    public const string HeaderStartToken = "<|header_start|>";

    /// <summary><c>&lt;|header_end|&gt;</c>: closes a chat message's role header.</summary>
    public const string HeaderEndToken = "<|header_end|>";

    /// <summary><c>&lt;|eot|&gt;</c>: end of a chat turn; the model emits it when its answer is complete.</summary>
    public const string EndOfTurnToken = "<|eot|>";

    /// <summary>Opens a tool call in the assistant's turn.</summary>
    public const string PythonStartToken = "<|python_start|>";

    /// <summary>Closes what <see cref="PythonStartToken"/> opened.</summary>
    public const string PythonEndToken = "<|python_end|>";

    private readonly BpeTokenizer _bpe;
    private readonly Dictionary<string, int> _vocab;
    private readonly bool _ignoreMerges;
    private readonly PreTokenizerSplitter _splitter;
    private readonly Regex? _addedTokenPattern;
    private readonly FrozenDictionary<string, int> _addedTokens;
    private readonly byte[]?[] _tokenBytes;
    private readonly bool[] _isSpecial;

    private Llama4Tokenizer(
        TokenizerJsonDefinition definition, int vocabSize, int bosTokenId, int? padTokenId, IEnumerable<int> eosTokenIds,
        string? chatTemplateSource)
    {
        _vocab = definition.Vocab;
        _ignoreMerges = definition.IgnoreMerges;
        _splitter = definition.Splitter;
        _bpe = BpeTokenizer.Create(new BpeOptions(definition.Vocab)
        {
            Merges = definition.Merges,
            ByteLevel = true,
        });

        VocabSize = vocabSize;
        _tokenBytes = new byte[vocabSize][];
        _isSpecial = new bool[vocabSize];
        foreach ((string token, int id) in definition.Vocab)
        {
            ByteLevelAlphabet.TryDecode(token, out _tokenBytes[id]);
        }

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (AddedTokenEntry token in definition.AddedTokens)
        {
            added.Add(token.Content, token.Id);
            _tokenBytes[token.Id] = Encoding.UTF8.GetBytes(token.Content);
            if (token.Special)
            {
                special.Add(token.Content, token.Id);
                _isSpecial[token.Id] = true;
            }
        }

        _addedTokens = added.ToFrozenDictionary(StringComparer.Ordinal);
        SpecialTokens = special.ToFrozenDictionary(StringComparer.Ordinal);
        // Longest first, so the leftmost match is the longest added token there (as the tokenizers library picks).
        // Interpreted: a release has ~2,000 added tokens, whose compilation costs ~200 ms at load, and the interpreter
        // already searches for their common "<|" prefix.
        _addedTokenPattern = added.Count == 0
            ? null
            : new Regex(
                string.Join('|', added.Keys.OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal)
                    .Select(Regex.Escape)),
                RegexOptions.CultureInvariant);

        BosTokenId = bosTokenId;
        PadTokenId = padTokenId;
        EosTokenIds = eosTokenIds.ToFrozenSet();
        ChatTemplateSource = chatTemplateSource;
        HeaderStartTokenId = GetSpecialTokenId(HeaderStartToken);
        HeaderEndTokenId = GetSpecialTokenId(HeaderEndToken);
        EndOfTurnTokenId = GetSpecialTokenId(EndOfTurnToken);
    }

    /// <summary>The model's <c>vocab_size</c> (config.json): every token id is in [0, VocabSize).</summary>
    public int VocabSize { get; }

    /// <summary>Id of the BOS token (<c>&lt;|begin_of_text|&gt;</c>).</summary>
    public int BosTokenId { get; }

    /// <summary>Id of the padding token (<c>pad_token_id</c>), or null when the model names none.</summary>
    public int? PadTokenId { get; }

    /// <summary>
    /// Ids that end generation: the union of config.json's and generation_config.json's <c>eos_token_id</c> and
    /// tokenizer_config.json's <c>eos_token</c>.
    /// </summary>
    public IReadOnlySet<int> EosTokenIds { get; }

    /// <summary>Id of <c>&lt;|header_start|&gt;</c>.</summary>
    public int HeaderStartTokenId { get; }

    /// <summary>Id of <c>&lt;|header_end|&gt;</c>.</summary>
    public int HeaderEndTokenId { get; }

    /// <summary>Id of <c>&lt;|eot|&gt;</c>.</summary>
    public int EndOfTurnTokenId { get; }

    /// <summary>The special tokens (added tokens marked <c>special</c>), text to id.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }

    /// <summary>
    /// tokenizer_config.json's <c>chat_template</c> (Jinja) as shipped, or null. It is checked to be a Llama 4 template
    /// but not executed: <see cref="Llama4ChatTemplate"/> renders the format in code.
    /// </summary>
    public string? ChatTemplateSource { get; }

    /// <summary>True when <paramref name="tokenId"/> is a special token (false for any id outside the vocabulary).</summary>
    public bool IsSpecialToken(int tokenId) => (uint)tokenId < (uint)VocabSize && _isSpecial[tokenId];

    /// <summary>True when <paramref name="tokenId"/> ends generation (see <see cref="EosTokenIds"/>).</summary>
    public bool IsEos(int tokenId) => EosTokenIds.Contains(tokenId);

    /// <summary>The id of special token <paramref name="token"/> (for example <c>"&lt;|eot|&gt;"</c>).</summary>
    /// <exception cref="KeyNotFoundException">The tokenizer has no such special token; the message names it.</exception>
    public int GetSpecialTokenId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return SpecialTokens.TryGetValue(token, out int id)
            ? id
            : throw new KeyNotFoundException($"The tokenizer has no special token '{token}'.");
    }

    /// <summary>Looks up special token <paramref name="token"/>; false when the tokenizer has none of that text.</summary>
    public bool TryGetSpecialTokenId(string token, out int tokenId)
    {
        ArgumentNullException.ThrowIfNull(token);
        return SpecialTokens.TryGetValue(token, out tokenId);
    }

    /// <summary>
    /// The bytes token <paramref name="tokenId"/> stands for: its UTF-8 bytes, which may be part of a multi-byte
    /// character (the text of an added token for special tokens). Empty for an id inside the vocabulary that
    /// tokenizer.json does not assign.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tokenId"/> is negative or not below <see cref="VocabSize"/>.</exception>
    public ReadOnlySpan<byte> GetTokenBytes(int tokenId)
    {
        if ((uint)tokenId >= (uint)VocabSize)
        {
            ThrowIdOutOfRange(tokenId);
        }

        return _tokenBytes[tokenId];
    }

    /// <summary>
    /// Encodes <paramref name="text"/> to token ids. Unpaired UTF-16 surrogates are encoded as U+FFFD.
    /// </summary>
    /// <param name="text">Text to encode.</param>
    /// <param name="addBos">Prepend <see cref="BosTokenId"/>.</param>
    /// <param name="parseSpecialTokens">
    /// True (the <c>tokenizers</c> default) to encode the exact text of an added token such as <c>&lt;|eot|&gt;</c> as
    /// that token's single id; false to encode it as ordinary text, so user input cannot forge control tokens.
    /// </param>
    public int[] Encode(string text, bool addBos = false, bool parseSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos)
        {
            ids.Add(BosTokenId);
        }

        AppendEncoded(text, parseSpecialTokens, ids);
        return [.. ids];
    }

    /// <summary>
    /// Decodes token ids to text: the tokens' bytes, concatenated, decoded as UTF-8 with every invalid or truncated
    /// sequence replaced by U+FFFD.
    /// </summary>
    /// <param name="tokenIds">Ids to decode.</param>
    /// <param name="skipSpecialTokens">Drop special tokens before decoding (their text is kept when false).</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is negative or not below <see cref="VocabSize"/>; the message names it.</exception>
    public string Decode(ReadOnlySpan<int> tokenIds, bool skipSpecialTokens = false)
    {
        var bytes = new ArrayBufferWriter<byte>(Math.Max(16, tokenIds.Length * 4));
        foreach (int id in tokenIds)
        {
            ReadOnlySpan<byte> tokenBytes = GetTokenBytes(id);
            if (!(skipSpecialTokens && _isSpecial[id]))
            {
                bytes.Write(tokenBytes);
            }
        }

        return Encoding.UTF8.GetString(bytes.WrittenSpan);
    }

    /// <summary>
    /// A decoder for one generated sequence that turns ids into text as they arrive and never splits a character;
    /// its output, concatenated and followed by <see cref="Llama4StreamingDecoder.Flush"/>, equals
    /// <see cref="Decode"/> of all the ids with the same <paramref name="skipSpecialTokens"/>.
    /// </summary>
    public Llama4StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => new(this, skipSpecialTokens);

    /// <summary>
    /// Renders <paramref name="messages"/> in the Llama 4 chat format (<see cref="Llama4ChatTemplate"/>) directly to
    /// token ids: the format's tokens (<c>&lt;|begin_of_text|&gt;</c>, headers, <c>&lt;|eot|&gt;</c>) as their ids and
    /// the text between them encoded exactly as in <see cref="Encode"/> of the rendered string.
    /// </summary>
    /// <param name="messages">The conversation (validated as by <see cref="Llama4ChatTemplate.Validate"/>).</param>
    /// <param name="addGenerationPrompt">End with an open assistant header so the model answers next.</param>
    /// <param name="tools">Tools rendered into the first user turn (<see cref="Llama4ChatTemplate"/>), or null.</param>
    /// <param name="parseSpecialTokensInContent">
    /// True to encode special-token text inside message contents as those tokens, as <c>apply_chat_template</c> with
    /// tokenization does; false (the default) to keep it ordinary text so a user cannot inject turns.
    /// </param>
    /// <exception cref="ChatTemplateException">The conversation is not valid.</exception>
    public int[] EncodeChat(
        IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, bool parseSpecialTokensInContent = false, IReadOnlyList<ChatTool>? tools = null)
    {
        var ids = new List<int>(64);
        foreach (var part in Llama4ChatTemplate.Parts(messages, addGenerationPrompt, tools))
        {
            if (part.Special)
            {
                ids.Add(TryGetSpecialTokenId(part.Text, out int id) ? id
                    : part.Text == Llama4ChatTemplate.ImageToken
                        ? throw new ChatTemplateException(part.Field ?? "messages", "this tokenizer has no <|image|> token, so the model cannot take images.")
                        : throw new ChatTemplateException("messages", $"cannot be rendered: the tokenizer has no special token '{part.Text}'."));
            }
            else
            {
                AppendEncoded(part.Text, parseSpecialTokensInContent, ids);
            }
        }

        return [.. ids];
    }

    private void AppendEncoded(string text, bool parseSpecialTokens, List<int> ids)
    {
        text = ReplaceUnpairedSurrogates(text);
        if (!parseSpecialTokens || _addedTokenPattern is null)
        {
            AppendOrdinary(text, ids);
            return;
        }

        int position = 0;
        for (Match match = _addedTokenPattern.Match(text); match.Success; match = match.NextMatch())
        {
            AppendOrdinary(text[position..match.Index], ids);
            ids.Add(_addedTokens[match.Value]);
            position = match.Index + match.Length;
        }

        AppendOrdinary(text[position..], ids);
    }

    private void AppendOrdinary(string text, List<int> ids)
    {
        if (text.Length == 0)
        {
            return;
        }

        var pieces = new List<(int Start, int Length)>();
        _splitter.Split(text, pieces);
        foreach ((int start, int length) in pieces)
        {
            ReadOnlySpan<char> piece = text.AsSpan(start, length);
            if (_ignoreMerges && TryLookupWhole(piece, out int wholeId))
            {
                ids.Add(wholeId);
                continue;
            }

            ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    private bool TryLookupWhole(ReadOnlySpan<char> piece, out int tokenId)
    {
        int maxBytes = Encoding.UTF8.GetMaxByteCount(piece.Length);
        Span<byte> buffer = maxBytes <= 512 ? stackalloc byte[maxBytes] : new byte[maxBytes];
        int count = Encoding.UTF8.GetBytes(piece, buffer);
        return _vocab.TryGetValue(ByteLevelAlphabet.Encode(buffer[..count]), out tokenId);
    }

    private static string ReplaceUnpairedSurrogates(string text)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0 || IsWellFormed(text))
        {
            return text;
        }

        var builder = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                builder.Append(c).Append(text[i + 1]);
                i++;
            }
            else
            {
                builder.Append(char.IsSurrogate(c) ? '\uFFFD' : c);
            }
        }

        return builder.ToString();
    }

    private static bool IsWellFormed(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(text[i]))
            {
                return false;
            }
        }

        return true;
    }

    [DoesNotReturn]
    private void ThrowIdOutOfRange(int tokenId) =>
        throw new ArgumentOutOfRangeException(
            nameof(tokenId), tokenId, $"Token id {tokenId} is outside the model's vocabulary [0, {VocabSize}).");
}
