using System.Text.Json;
using System.Text.RegularExpressions;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>One entry of tokenizer.json's <c>added_tokens</c>.</summary>
/// <param name="Id">Token id.</param>
/// <param name="Content">Exact text the token stands for (matched verbatim in input when special tokens are parsed).</param>
/// <param name="Special">True when decoding with special tokens skipped drops it.</param>
internal readonly record struct AddedTokenEntry(int Id, string Content, bool Special);

/// <summary>
/// The parts of a Hugging Face <c>tokenizer.json</c> (format 1.0, <c>tokenizers</c> library) that a byte-level BPE
/// tokenizer of the Llama 3 / Llama 4 kind uses, validated. Anything else such a file may hold (a normalizer, byte
/// fallback, continuing-subword prefixes, <c>lstrip</c>/<c>rstrip</c> added tokens, a non-ByteLevel decoder) is
/// rejected with a <see cref="TokenizerException"/> naming the field, rather than silently tokenizing differently.
/// The <c>post_processor</c> is not read: callers ask for the BOS token explicitly.
/// </summary>
internal sealed class TokenizerJsonDefinition
{
    /// <summary>GPT-2's split pattern, which a ByteLevel pre-tokenizer with <c>use_regex: true</c> applies.</summary>
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private TokenizerJsonDefinition(
        Dictionary<string, int> vocab, List<string> merges, bool ignoreMerges, List<AddedTokenEntry> addedTokens,
        PreTokenizerSplitter splitter)
    {
        Vocab = vocab;
        Merges = merges;
        IgnoreMerges = ignoreMerges;
        AddedTokens = addedTokens;
        Splitter = splitter;
    }

    /// <summary><c>model.vocab</c>: byte-level token string to id.</summary>
    public Dictionary<string, int> Vocab { get; }

    /// <summary><c>model.merges</c> in rank order, each as <c>"left right"</c>.</summary>
    public List<string> Merges { get; }

    /// <summary><c>model.ignore_merges</c>: a pre-token found whole in the vocabulary is one token, merges unused.</summary>
    public bool IgnoreMerges { get; }

    /// <summary><c>added_tokens</c> in file order.</summary>
    public List<AddedTokenEntry> AddedTokens { get; }

    /// <summary>The pre-tokenizer.</summary>
    public PreTokenizerSplitter Splitter { get; }

    /// <summary>Parses and validates the text of a tokenizer.json; <paramref name="fileName"/> names it in errors.</summary>
    public static TokenizerJsonDefinition Parse(string json, string fileName)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{fileName}: malformed JSON: {e.Message}", e);
        }

        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new TokenizerException($"{fileName}: the top level must be a JSON object, not {root.ValueKind}.");
            }

            RejectUnlessNull(root, "normalizer", fileName, "a normalizer is not supported (Llama 4 has none)");
            CheckDecoder(root, fileName);
            PreTokenizerSplitter splitter = ReadPreTokenizer(root, fileName);
            JsonElement model = RequireObject(root, "model", fileName);
            var vocab = ReadVocab(model, fileName);
            var merges = ReadMerges(model, vocab, fileName);
            bool ignoreMerges = ReadModelOptions(model, fileName);
            var addedTokens = ReadAddedTokens(root, vocab, fileName);
            return new TokenizerJsonDefinition(vocab, merges, ignoreMerges, addedTokens, splitter);
        }
    }

    private static void CheckDecoder(JsonElement root, string fileName)
    {
        if (!root.TryGetProperty("decoder", out JsonElement decoder) || decoder.ValueKind != JsonValueKind.Object)
        {
            throw new TokenizerException($"{fileName}: 'decoder' must be an object of type ByteLevel.");
        }

        string? type = OptionalString(decoder, "type", $"{fileName}: decoder");
        if (type != "ByteLevel")
        {
            throw new TokenizerException(
                $"{fileName}: decoder.type '{type}' is not supported; only 'ByteLevel' (byte-level BPE) is.");
        }
    }

    private static PreTokenizerSplitter ReadPreTokenizer(JsonElement root, string fileName)
    {
        if (!root.TryGetProperty("pre_tokenizer", out JsonElement pre) || pre.ValueKind != JsonValueKind.Object)
        {
            throw new TokenizerException(
                $"{fileName}: 'pre_tokenizer' must be an object (a Split + ByteLevel sequence, or ByteLevel).");
        }

        string? type = OptionalString(pre, "type", $"{fileName}: pre_tokenizer");
        if (type == "ByteLevel")
        {
            CheckByteLevelPreTokenizer(pre, $"{fileName}: pre_tokenizer", out bool useRegex);
            if (!useRegex)
            {
                throw new TokenizerException(
                    $"{fileName}: pre_tokenizer is ByteLevel with use_regex false and no Split before it; "
                    + "a tokenizer without a split pattern is not supported.");
            }

            return new PreTokenizerSplitter(CompilePattern(Gpt2Pattern, fileName, "pre_tokenizer"), keepGaps: true);
        }

        if (type != "Sequence")
        {
            throw new TokenizerException(
                $"{fileName}: pre_tokenizer.type '{type}' is not supported; expected 'Sequence' or 'ByteLevel'.");
        }

        if (!pre.TryGetProperty("pretokenizers", out JsonElement list) || list.ValueKind != JsonValueKind.Array
            || list.GetArrayLength() != 2)
        {
            throw new TokenizerException(
                $"{fileName}: pre_tokenizer.pretokenizers must be [Split, ByteLevel] (the Llama 3/4 layout).");
        }

        JsonElement split = list[0];
        JsonElement byteLevel = list[1];
        if (split.ValueKind != JsonValueKind.Object || OptionalString(split, "type", fileName) != "Split")
        {
            throw new TokenizerException($"{fileName}: pre_tokenizer.pretokenizers[0] must be of type 'Split'.");
        }

        if (byteLevel.ValueKind != JsonValueKind.Object || OptionalString(byteLevel, "type", fileName) != "ByteLevel")
        {
            throw new TokenizerException($"{fileName}: pre_tokenizer.pretokenizers[1] must be of type 'ByteLevel'.");
        }

        CheckByteLevelPreTokenizer(byteLevel, $"{fileName}: pre_tokenizer.pretokenizers[1]", out bool secondRegex);
        if (secondRegex)
        {
            throw new TokenizerException(
                $"{fileName}: pre_tokenizer.pretokenizers[1].use_regex true after a Split is not supported.");
        }

        const string splitField = "pre_tokenizer.pretokenizers[0]";
        if (!split.TryGetProperty("pattern", out JsonElement pattern) || pattern.ValueKind != JsonValueKind.Object
            || !pattern.TryGetProperty("Regex", out JsonElement regexText) || regexText.ValueKind != JsonValueKind.String)
        {
            throw new TokenizerException($"{fileName}: {splitField}.pattern must be {{\"Regex\": \"...\"}}.");
        }

        string behavior = OptionalString(split, "behavior", fileName) ?? "";
        bool invert = split.TryGetProperty("invert", out JsonElement invertElement)
            && invertElement.ValueKind == JsonValueKind.True;
        bool keepGaps = (behavior, invert) switch
        {
            ("Isolated", false) => true,
            ("Removed", true) => false,
            _ => throw new TokenizerException(
                $"{fileName}: {splitField} behavior '{behavior}' with invert {invert.ToString().ToLowerInvariant()} "
                + "is not supported; expected 'Isolated' (invert false) or 'Removed' (invert true)."),
        };
        return new PreTokenizerSplitter(CompilePattern(regexText.GetString()!, fileName, splitField), keepGaps);
    }

    private static void CheckByteLevelPreTokenizer(JsonElement element, string where, out bool useRegex)
    {
        if (element.TryGetProperty("add_prefix_space", out JsonElement prefix) && prefix.ValueKind == JsonValueKind.True)
        {
            throw new TokenizerException($"{where}.add_prefix_space true is not supported (Llama 4 uses false).");
        }

        useRegex = !element.TryGetProperty("use_regex", out JsonElement regex) || regex.ValueKind != JsonValueKind.False;
    }

    private static Regex CompilePattern(string pattern, string fileName, string field)
    {
        try
        {
            return new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new TokenizerException($"{fileName}: {field}.pattern is not a valid regular expression: {e.Message}", e);
        }
    }

    private static Dictionary<string, int> ReadVocab(JsonElement model, string fileName)
    {
        if (!model.TryGetProperty("vocab", out JsonElement vocabElement) || vocabElement.ValueKind != JsonValueKind.Object)
        {
            throw new TokenizerException($"{fileName}: model.vocab must be an object mapping token strings to ids.");
        }

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var tokenById = new Dictionary<int, string>();
        foreach (JsonProperty entry in vocabElement.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
            {
                throw new TokenizerException(
                    $"{fileName}: model.vocab['{entry.Name}'] must be a non-negative integer id, not {entry.Value}.");
            }

            if (!ByteLevelAlphabet.TryDecode(entry.Name, out _))
            {
                throw new TokenizerException(
                    $"{fileName}: model.vocab['{entry.Name}'] (id {id}) has a character outside the byte-level "
                    + "alphabet; only byte-level BPE vocabularies are supported.");
            }

            if (!vocab.TryAdd(entry.Name, id))
            {
                throw new TokenizerException($"{fileName}: model.vocab lists '{entry.Name}' twice.");
            }

            if (!tokenById.TryAdd(id, entry.Name))
            {
                throw new TokenizerException(
                    $"{fileName}: model.vocab gives id {id} to both '{tokenById[id]}' and '{entry.Name}'.");
            }
        }

        for (int b = 0; b < 256; b++)
        {
            string symbol = ByteLevelAlphabet.ByteToChar((byte)b).ToString();
            if (!vocab.ContainsKey(symbol))
            {
                throw new TokenizerException(
                    $"{fileName}: model.vocab has no token for byte 0x{b:X2} ('{symbol}'); a byte-level BPE "
                    + "vocabulary must cover all 256 bytes.");
            }
        }

        return vocab;
    }

    private static List<string> ReadMerges(JsonElement model, Dictionary<string, int> vocab, string fileName)
    {
        if (!model.TryGetProperty("merges", out JsonElement mergesElement) || mergesElement.ValueKind != JsonValueKind.Array)
        {
            throw new TokenizerException($"{fileName}: model.merges must be an array.");
        }

        var merges = new List<string>(mergesElement.GetArrayLength());
        int index = 0;
        foreach (JsonElement merge in mergesElement.EnumerateArray())
        {
            string left;
            string right;
            if (merge.ValueKind == JsonValueKind.String)
            {
                string[] parts = merge.GetString()!.Split(' ');
                if (parts.Length != 2)
                {
                    throw new TokenizerException(
                        $"{fileName}: model.merges[{index}] '{merge.GetString()}' must be two tokens separated by one space.");
                }

                (left, right) = (parts[0], parts[1]);
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
            {
                (left, right) = (merge[0].GetString()!, merge[1].GetString()!);
            }
            else
            {
                throw new TokenizerException(
                    $"{fileName}: model.merges[{index}] must be \"left right\" or [\"left\", \"right\"], not {merge}.");
            }

            foreach (string part in (ReadOnlySpan<string>)[left, right, left + right])
            {
                if (!vocab.ContainsKey(part))
                {
                    throw new TokenizerException(
                        $"{fileName}: model.merges[{index}] ('{left}' + '{right}') uses '{part}', which is not in model.vocab.");
                }
            }

            merges.Add(left + " " + right);
            index++;
        }

        return merges;
    }

    private static bool ReadModelOptions(JsonElement model, string fileName)
    {
        string? type = OptionalString(model, "type", $"{fileName}: model");
        if (type is not null && type != "BPE")
        {
            throw new TokenizerException($"{fileName}: model.type '{type}' is not supported; only 'BPE' is.");
        }

        if (model.TryGetProperty("byte_fallback", out JsonElement fallback) && fallback.ValueKind == JsonValueKind.True)
        {
            throw new TokenizerException($"{fileName}: model.byte_fallback true is not supported (byte-level BPE needs none).");
        }

        foreach (string field in (ReadOnlySpan<string>)["continuing_subword_prefix", "end_of_word_suffix"])
        {
            if (model.TryGetProperty(field, out JsonElement value) && value.ValueKind == JsonValueKind.String
                && value.GetString()!.Length > 0)
            {
                throw new TokenizerException($"{fileName}: model.{field} is not supported (Llama 4 has none).");
            }
        }

        if (model.TryGetProperty("dropout", out JsonElement dropout) && dropout.ValueKind == JsonValueKind.Number
            && dropout.GetDouble() != 0)
        {
            throw new TokenizerException($"{fileName}: model.dropout {dropout} is not supported at inference.");
        }

        if (!model.TryGetProperty("ignore_merges", out JsonElement ignore) || ignore.ValueKind == JsonValueKind.Null)
        {
            return false;
        }

        return ignore.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new TokenizerException($"{fileName}: model.ignore_merges must be true or false, not {ignore}."),
        };
    }

    private static List<AddedTokenEntry> ReadAddedTokens(JsonElement root, Dictionary<string, int> vocab, string fileName)
    {
        var result = new List<AddedTokenEntry>();
        if (!root.TryGetProperty("added_tokens", out JsonElement list) || list.ValueKind == JsonValueKind.Null)
        {
            return result;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw new TokenizerException($"{fileName}: added_tokens must be an array.");
        }

        var seenIds = new HashSet<int>();
        HashSet<int>? vocabIds = null;
        var seenContent = new HashSet<string>(StringComparer.Ordinal);
        int index = 0;
        foreach (JsonElement token in list.EnumerateArray())
        {
            string where = $"{fileName}: added_tokens[{index}]";
            if (token.ValueKind != JsonValueKind.Object)
            {
                throw new TokenizerException($"{where} must be an object.");
            }

            if (!token.TryGetProperty("id", out JsonElement idElement) || !idElement.TryGetInt32(out int id) || id < 0)
            {
                throw new TokenizerException($"{where}.id must be a non-negative integer.");
            }

            string? content = OptionalString(token, "content", where);
            if (string.IsNullOrEmpty(content))
            {
                throw new TokenizerException($"{where}.content must be a non-empty string.");
            }

            foreach (string flag in (ReadOnlySpan<string>)["lstrip", "rstrip", "single_word"])
            {
                if (token.TryGetProperty(flag, out JsonElement value) && value.ValueKind == JsonValueKind.True)
                {
                    throw new TokenizerException($"{where} ('{content}'): {flag} true is not supported.");
                }
            }

            bool special = token.TryGetProperty("special", out JsonElement specialElement)
                && specialElement.ValueKind == JsonValueKind.True;
            if (!seenIds.Add(id))
            {
                throw new TokenizerException($"{where} ('{content}'): id {id} is used by an earlier added token.");
            }

            if (!seenContent.Add(content))
            {
                throw new TokenizerException($"{where}: '{content}' is listed twice.");
            }

            bool inVocab = vocab.TryGetValue(content, out int vocabId);
            if (inVocab && vocabId != id)
            {
                throw new TokenizerException(
                    $"{where}: '{content}' has id {id} but model.vocab gives it id {vocabId}.");
            }

            vocabIds ??= [.. vocab.Values];
            if (!inVocab && vocabIds.Contains(id))
            {
                throw new TokenizerException(
                    $"{where}: id {id} of '{content}' is already a model.vocab token of different text.");
            }

            result.Add(new AddedTokenEntry(id, content, special));
            index++;
        }

        return result;
    }

    private static JsonElement RequireObject(JsonElement parent, string name, string fileName)
    {
        if (!parent.TryGetProperty(name, out JsonElement value) || value.ValueKind != JsonValueKind.Object)
        {
            throw new TokenizerException($"{fileName}: '{name}' must be an object.");
        }

        return value;
    }

    private static void RejectUnlessNull(JsonElement parent, string name, string fileName, string reason)
    {
        if (parent.TryGetProperty(name, out JsonElement value) && value.ValueKind != JsonValueKind.Null)
        {
            throw new TokenizerException($"{fileName}: '{name}' is set but {reason}.");
        }
    }

    private static string? OptionalString(JsonElement parent, string name, string where)
    {
        if (!parent.TryGetProperty(name, out JsonElement value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind != JsonValueKind.String)
        {
            throw new TokenizerException($"{where}.{name} must be a string, not {value.ValueKind}.");
        }

        return value.GetString();
    }
}
