using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

/// <summary>
/// Generates the small Llama 4 style <c>tokenizer.json</c> and <c>tokenizer_config.json</c> of the bundled tiny
/// fixtures (tests/fixtures/tiny-*), from each fixture's config.json, deterministically.
/// </summary>
/// <remarks>
/// Layout of the 512 ids (the fixtures' <c>vocab_size</c>):
/// <list type="bullet">
/// <item>0..255: the 256 byte tokens (id = byte value) in the byte-level alphabet.</item>
/// <item>256..495: byte-level BPE merges learnt from <see cref="Corpus"/> with the Llama 4 split pattern: repeatedly
/// merge the most frequent adjacent pair (ties: ordinal order of left, then right token) until 496 tokens exist.</item>
/// <item>496..511: sixteen Llama 4 special tokens. Fixed in every fixture: 498 <c>&lt;|python_start|&gt;</c>,
/// 499 <c>&lt;|python_end|&gt;</c>, 500 <c>&lt;|begin_of_text|&gt;</c> (= bos_token_id), 502
/// <c>&lt;|image_start|&gt;</c>, 503 <c>&lt;|image_end|&gt;</c>, 504 <c>&lt;|patch|&gt;</c> (tiny-maverick-mm's
/// boi / eoi / image_token_index, as in the releases where image_token_index is <c>&lt;|patch|&gt;</c>), 505
/// <c>&lt;|header_start|&gt;</c>, 506 <c>&lt;|header_end|&gt;</c>, 507 <c>&lt;|eot|&gt;</c> (in every fixture's
/// eos_token_id), 509 <c>&lt;|image|&gt;</c>, 510 <c>&lt;|step|&gt;</c>, 511 <c>&lt;|finetune_right_pad|&gt;</c>
/// (= pad_token_id). The other eos ids of config.json, in their listed order, become <c>&lt;|end_of_text|&gt;</c> and
/// <c>&lt;|eom|&gt;</c> (so every eos id is a Llama 4 stop token); the slots left of 496, 497, 501, 508 take
/// <c>&lt;|tile_x_separator|&gt;</c> and <c>&lt;|tile_y_separator|&gt;</c> in ascending id order. A fixture with a
/// golden_vision.json (tiny-maverick-mm) first pins its image tokens where that file puts them (505
/// <c>&lt;|tile_x_separator|&gt;</c>, 506 <c>&lt;|tile_y_separator|&gt;</c>, 508 <c>&lt;|image|&gt;</c>), and the header
/// tokens they displace move to the free slots (501, 509).</item>
/// </list>
/// Regenerate after changing this class with
/// <c>TINY_TOKENIZER_REGENERATE=1 dotnet test tests/Coordinator.Tests -c Release --filter FullyQualifiedName~TinyTokenizerFixtureTests</c>;
/// without the variable the same test fails when a committed file differs from what this class produces.
/// </remarks>
internal static class TinyTokenizerGenerator
{
    public const int VocabSize = 512;
    public const int BpeTokenCount = 496;
    public const int EndOfTurnId = 507;

    /// <summary>The Llama 4 release split pattern (o200k-style), as its tokenizer.json writes it.</summary>
    public const string Llama4SplitPattern =
        @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        + @"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        + @"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static readonly string[] FixtureNames = ["tiny-maverick", "tiny-scout", "tiny-maverick-mm", "tiny-maverick-long"];

    /// <summary>
    /// A Jinja chat template for the subset of the Llama 4 format that <see cref="Llama4ChatTemplate"/> renders (text, and
    /// <c>&lt;|image|&gt;</c> for an image part),
    /// kept in tokenizer_config.json so the files also serve a Hugging Face runtime.
    /// </summary>
    public const string ChatTemplate =
        """
        {{- bos_token }}
        {%- if messages[0]['role'] == 'system' %}
            {%- if messages[0]['content'] is string %}
                {%- set system_text = messages[0]['content'] | trim %}
            {%- else %}
                {%- set system_text = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') | trim %}
            {%- endif %}
            {{- '<|header_start|>system<|header_end|>\n\n' + system_text + '<|eot|>' }}
            {%- set messages = messages[1:] %}
        {%- endif %}
        {%- for message in messages %}
            {{- '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}
            {%- if message['content'] is string %}
                {{- message['content'] }}
            {%- else %}
                {%- for part in message['content'] %}
                    {%- if part['type'] == 'text' %}
                        {{- part['text'] }}
                    {%- elif part['type'] == 'image' or part['type'] == 'image_url' %}
                        {{- '<|image|>' }}
                    {%- endif %}
                {%- endfor %}
            {%- endif %}
            {{- '<|eot|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|header_start|>assistant<|header_end|>\n\n' }}
        {%- endif %}

        """;

    /// <summary>The English text the merges are learnt from (written for this fixture).</summary>
    public const string Corpus =
        """
        The model reads a prompt, one token at a time, and writes the answer that it thinks should come next.
        Each token is a small piece of text: a whole word such as "the" or "and", a part of a longer word, a
        number, a space, or a single byte of a character that the vocabulary does not know as a whole.
        In a mixture of experts, every layer has many experts, and a router sends each token to the expert
        that fits it best. The experts run on different workers, so the coordinator gathers the tokens for
        each expert, sends them over the network, and then combines the results in the same order.
        User: Hello! Can you tell me what the weather will be like tomorrow in the city?
        Assistant: I cannot see the weather outside, but I can explain how a forecast is made. Weather
        stations measure the temperature, the wind and the pressure of the air, and a computer model then
        predicts how these values will change over the next hours and days.
        System: You are a helpful assistant. Answer the question of the user in a short and clear way.
        User: What is the capital of France, and how many people live there?
        Assistant: The capital of France is Paris. About two million people live in the city itself, and
        more than ten million live in the wider region around it.
        The attention layers let every token look back at the tokens before it. Some layers use rotary
        position embeddings and only look at the current chunk of the context; other layers have no position
        embedding at all and can see the whole conversation from the first token to the last one.
        When the answer is complete, the model writes the end of turn token, and the server stops the
        stream. A good server keeps many conversations running at the same time, adds new requests to the
        running batch at every step, and removes the ones that have finished.
        Numbers such as 1, 2, 3, 10, 42, 100, 2025 and 3.14 are split into groups of at most three digits.
        Punctuation marks like commas, periods, question marks and quotes ("like these") are tokens too.
        We tested the tokenizer with short sentences and long ones, with names like Alice and Bob, with
        words in capitals LIKE THIS, and with lines that end in a new line character.
        The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. It's the
        weather that's changing, isn't it? They're here, we've seen them, and I'll tell you what I'd do.

        """;

    /// <summary>The fixed special-token ids shared by every fixture.</summary>
    private static readonly (int Id, string Token)[] FixedSpecials =
    [
        (498, "<|python_start|>"),
        (499, "<|python_end|>"),
        (500, Llama4Tokenizer.BeginOfTextToken),
        (502, "<|image_start|>"),
        (503, "<|image_end|>"),
        (504, "<|patch|>"),
        (505, Llama4Tokenizer.HeaderStartToken),
        (506, Llama4Tokenizer.HeaderEndToken),
        (507, Llama4Tokenizer.EndOfTurnToken),
        (509, "<|image|>"),
        (510, "<|step|>"),
        (511, "<|finetune_right_pad|>"),
    ];

    private static readonly int[] VariableSlots = [496, 497, 501, 508];
    private static readonly string[] EosNames = ["<|end_of_text|>", "<|eom|>"];
    private static readonly string[] FillerNames = ["<|tile_x_separator|>", "<|tile_y_separator|>"];

    /// <summary>The BPE part (identical for every fixture): vocabulary in id order and merges in rank order.</summary>
    public static (List<string> Vocab, List<(string Left, string Right)> Merges) LearnBpe()
    {
        var splitter = new PreTokenizerSplitter(new Regex(Llama4SplitPattern, RegexOptions.CultureInvariant), keepGaps: true);
        var pieces = new List<(int Start, int Length)>();
        string corpus = Corpus.Replace("\r\n", "\n", StringComparison.Ordinal);
        splitter.Split(corpus, pieces);

        var wordCounts = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach ((int start, int length) in pieces)
        {
            string word = ByteLevelAlphabet.Encode(Encoding.UTF8.GetBytes(corpus.Substring(start, length)));
            wordCounts[word] = wordCounts.GetValueOrDefault(word) + 1;
        }

        var words = wordCounts.Select(w => (Symbols: w.Key.Select(c => c.ToString()).ToList(), Count: w.Value)).ToList();
        var vocab = Enumerable.Range(0, 256).Select(b => ByteLevelAlphabet.ByteToChar((byte)b).ToString()).ToList();
        var known = new HashSet<string>(vocab, StringComparer.Ordinal);
        var merges = new List<(string Left, string Right)>();
        while (vocab.Count < BpeTokenCount)
        {
            var pairCounts = new Dictionary<(string, string), int>();
            foreach ((List<string> symbols, int count) in words)
            {
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    var pair = (symbols[i], symbols[i + 1]);
                    pairCounts[pair] = pairCounts.GetValueOrDefault(pair) + count;
                }
            }

            if (pairCounts.Count == 0)
            {
                throw new InvalidOperationException($"The corpus ran out of pairs after {vocab.Count} tokens.");
            }

            var best = pairCounts
                .OrderByDescending(p => p.Value)
                .ThenBy(p => p.Key.Item1, StringComparer.Ordinal)
                .ThenBy(p => p.Key.Item2, StringComparer.Ordinal)
                .First().Key;
            merges.Add(best);
            string merged = best.Item1 + best.Item2;
            if (known.Add(merged))
            {
                vocab.Add(merged);
            }

            foreach ((List<string> symbols, _) in words)
            {
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] = merged;
                        symbols.RemoveAt(i + 1);
                    }
                }
            }
        }

        return (vocab, merges);
    }

    /// <summary>
    /// Special token per id (496..511) for a fixture with these config.json values. <paramref name="pinned"/> (id → token,
    /// from a fixture's golden_vision.json <c>special_tokens</c>) puts those tokens at those ids first: a fixed token they
    /// displace, like the eos names and the fillers, takes the next free slot in ascending id order.
    /// </summary>
    public static SortedDictionary<int, string> SpecialTokenLayout(int bosTokenId, int padTokenId, IReadOnlyList<int> eosTokenIds,
        IReadOnlyDictionary<int, string>? pinned = null)
    {
        if (bosTokenId != 500 || padTokenId != 511)
        {
            throw new InvalidOperationException($"bos {bosTokenId} / pad {padTokenId}: the layout needs bos 500 and pad 511.");
        }

        if (!eosTokenIds.Contains(EndOfTurnId))
        {
            throw new InvalidOperationException($"eos_token_id [{string.Join(", ", eosTokenIds)}] lacks {EndOfTurnId} (<|eot|>).");
        }

        var layout = new SortedDictionary<int, string>();
        foreach ((int id, string token) in FixedSpecials)
        {
            layout.Add(id, token);
        }

        var slots = new SortedSet<int>(VariableSlots);
        var displaced = new List<string>();
        foreach ((int id, string token) in pinned ?? new Dictionary<int, string>())
        {
            if (id is < 496 or > 511 || id == bosTokenId || id == padTokenId || eosTokenIds.Contains(id))
            {
                throw new InvalidOperationException($"pinned token {token} at {id} collides with bos, pad or eos, or is outside 496..511.");
            }
            foreach (int old in layout.Where(kv => kv.Value == token).Select(kv => kv.Key).ToList())
            {
                layout.Remove(old);
                slots.Add(old);
            }
            if (layout.TryGetValue(id, out string? other))
            {
                displaced.Add(other);
            }
            layout[id] = token;
            slots.Remove(id);
        }

        int[] otherEos = [.. eosTokenIds.Where(id => id != EndOfTurnId).Distinct()];
        if (otherEos.Length > EosNames.Length || otherEos.Any(id => !slots.Contains(id)))
        {
            throw new InvalidOperationException(
                $"eos_token_id [{string.Join(", ", eosTokenIds)}]: ids besides {EndOfTurnId} must be at most two of "
                + $"{string.Join(", ", slots)}.");
        }

        for (int i = 0; i < otherEos.Length; i++)
        {
            layout.Add(otherEos[i], EosNames[i]);
        }

        var names = new Queue<string>(EosNames.Skip(otherEos.Length).Concat(displaced).Concat(FillerNames.Where(f => !layout.ContainsValue(f))));
        foreach (int slot in slots.Where(slot => !layout.ContainsKey(slot)))
        {
            layout.Add(slot, names.Dequeue());
        }

        return layout;
    }

    /// <summary>Generates (tokenizer.json, tokenizer_config.json) for the fixture folder <paramref name="fixtureDirectory"/>.</summary>
    public static (string TokenizerJson, string TokenizerConfigJson) Generate(string fixtureDirectory)
    {
        using JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(fixtureDirectory, "config.json")));
        JsonElement root = config.RootElement;
        JsonElement text = root.TryGetProperty("text_config", out JsonElement nested) ? nested : root;
        if (text.GetProperty("vocab_size").GetInt32() != VocabSize)
        {
            throw new InvalidOperationException($"{fixtureDirectory}: vocab_size is not {VocabSize}.");
        }

        int[] eos = [.. text.GetProperty("eos_token_id").EnumerateArray().Select(e => e.GetInt32())];
        SortedDictionary<int, string> specials = SpecialTokenLayout(
            text.GetProperty("bos_token_id").GetInt32(), text.GetProperty("pad_token_id").GetInt32(), eos, VisionSpecials(fixtureDirectory));
        foreach ((string field, string expected) in (ReadOnlySpan<(string, string)>)[
                     ("boi_token_index", "<|image_start|>"), ("eoi_token_index", "<|image_end|>"), ("image_token_index", "<|patch|>")])
        {
            if (root.TryGetProperty(field, out JsonElement index) && specials[index.GetInt32()] != expected)
            {
                throw new InvalidOperationException($"{fixtureDirectory}: {field} {index} is not {expected} in the layout.");
            }
        }

        (List<string> vocab, List<(string Left, string Right)> merges) = LearnBpe();
        int maxLength = text.GetProperty("max_position_embeddings").GetInt32();
        return (WriteTokenizerJson(vocab, merges, specials), WriteTokenizerConfig(specials, maxLength));
    }

    /// <summary>
    /// The image tokens a vision fixture's golden_vision.json fixes (<c>special_tokens.ids</c> and <c>.strings</c>), so
    /// that the tokenizer maps <c>&lt;|image|&gt;</c> and the tile separators to the ids its golden prompts use; null
    /// for a fixture without one.
    /// </summary>
    private static Dictionary<int, string>? VisionSpecials(string fixtureDirectory)
    {
        string path = Path.Combine(fixtureDirectory, "golden_vision.json");
        if (!File.Exists(path))
        {
            return null;
        }
        using JsonDocument golden = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement special = golden.RootElement.GetProperty("special_tokens");
        JsonElement strings = special.GetProperty("strings");
        return special.GetProperty("ids").EnumerateObject().ToDictionary(p => p.Value.GetInt32(), p => strings.GetProperty(p.Name).GetString()!);
    }

    private static string WriteTokenizerJson(
        List<string> vocab, List<(string Left, string Right)> merges, SortedDictionary<int, string> specials)
    {
        return WriteJson(w =>
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            foreach ((int id, string token) in specials)
            {
                WriteAddedToken(w, id, token);
            }

            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("pretokenizers");
            w.WriteStartObject();
            w.WriteString("type", "Split");
            w.WriteStartObject("pattern");
            w.WriteString("Regex", Llama4SplitPattern);
            w.WriteEndObject();
            w.WriteString("behavior", "Isolated");
            w.WriteBoolean("invert", false);
            w.WriteEndObject();
            w.WriteStartObject();
            w.WriteString("type", "ByteLevel");
            w.WriteBoolean("add_prefix_space", false);
            w.WriteBoolean("trim_offsets", true);
            w.WriteBoolean("use_regex", false);
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            WritePostProcessor(w, specials.First(s => s.Value == Llama4Tokenizer.BeginOfTextToken).Key);
            TokenizerJsonWriter.WriteByteLevelDecoder(w);
            TokenizerJsonWriter.WriteBpeModel(w, vocab.Select((token, id) => (token, id)), merges, ignoreMerges: true);
            w.WriteEndObject();
        });
    }

    private static void WritePostProcessor(Utf8JsonWriter w, int bosId)
    {
        const string bos = Llama4Tokenizer.BeginOfTextToken;
        w.WriteStartObject("post_processor");
        w.WriteString("type", "TemplateProcessing");
        w.WriteStartArray("single");
        WriteTemplatePiece(w, "SpecialToken", bos, 0);
        WriteTemplatePiece(w, "Sequence", "A", 0);
        w.WriteEndArray();
        w.WriteStartArray("pair");
        WriteTemplatePiece(w, "SpecialToken", bos, 0);
        WriteTemplatePiece(w, "Sequence", "A", 0);
        WriteTemplatePiece(w, "SpecialToken", bos, 1);
        WriteTemplatePiece(w, "Sequence", "B", 1);
        w.WriteEndArray();
        w.WriteStartObject("special_tokens");
        w.WriteStartObject(bos);
        w.WriteString("id", bos);
        w.WriteStartArray("ids");
        w.WriteNumberValue(bosId);
        w.WriteEndArray();
        w.WriteStartArray("tokens");
        w.WriteStringValue(bos);
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteTemplatePiece(Utf8JsonWriter w, string kind, string id, int typeId)
    {
        w.WriteStartObject();
        w.WriteStartObject(kind);
        w.WriteString("id", id);
        w.WriteNumber("type_id", typeId);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteAddedToken(Utf8JsonWriter w, int? id, string token) => TokenizerJsonWriter.WriteAddedToken(w, id, token);

    private static string WriteTokenizerConfig(SortedDictionary<int, string> specials, int modelMaxLength)
    {
        return WriteJson(w =>
        {
            w.WriteStartObject();
            w.WriteBoolean("add_bos_token", true);
            w.WriteBoolean("add_eos_token", false);
            w.WriteStartObject("added_tokens_decoder");
            foreach ((int id, string token) in specials)
            {
                w.WritePropertyName(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                WriteAddedToken(w, null, token);
            }

            w.WriteEndObject();
            w.WriteString("bos_token", Llama4Tokenizer.BeginOfTextToken);
            w.WriteString("chat_template", ChatTemplate);
            w.WriteBoolean("clean_up_tokenization_spaces", false);
            w.WriteString("eos_token", Llama4Tokenizer.EndOfTurnToken);
            w.WriteStartArray("model_input_names");
            w.WriteStringValue("input_ids");
            w.WriteStringValue("attention_mask");
            w.WriteEndArray();
            w.WriteNumber("model_max_length", modelMaxLength);
            w.WriteString("pad_token", "<|finetune_right_pad|>");
            w.WriteString("padding_side", "left");
            w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
            w.WriteEndObject();
        });
    }

    private static string WriteJson(Action<Utf8JsonWriter> write)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions
        {
            Indented = true,
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
            NewLine = "\n",
        }))
        {
            write(writer);
        }

        return Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }
}
