using System.Text.Json;

namespace Distributed.Coordinator.Serving.Tokenization;

public sealed partial class Llama4Tokenizer
{
    /// <summary>File name of the Hugging Face tokenizer definition in a model directory.</summary>
    public const string TokenizerFileName = "tokenizer.json";

    /// <summary>File name of the Hugging Face tokenizer settings (special token names, chat template).</summary>
    public const string TokenizerConfigFileName = "tokenizer_config.json";

    private const string ConfigFileName = "config.json";
    private const string GenerationConfigFileName = "generation_config.json";

    /// <summary>
    /// Loads the tokenizer of the Hugging Face model directory <paramref name="modelDirectory"/>.
    /// </summary>
    /// <remarks>
    /// Reads <c>tokenizer.json</c> and <c>config.json</c> (required; for a multimodal <c>llama4</c> config the fields
    /// come from its <c>text_config</c>), and <c>generation_config.json</c> and <c>tokenizer_config.json</c> when
    /// present. Checks that every token id in tokenizer.json is below config.json's <c>vocab_size</c>; that the BOS,
    /// EOS and pad ids are tokens of the vocabulary and that the files agree on them; that <c>&lt;|begin_of_text|&gt;</c>,
    /// <c>&lt;|header_start|&gt;</c>, <c>&lt;|header_end|&gt;</c> and <c>&lt;|eot|&gt;</c> are special tokens and the
    /// first is the BOS token; that tokenizer_config.json's <c>added_tokens_decoder</c> matches tokenizer.json; and that
    /// a shipped <c>chat_template</c> is a Llama 4 one.
    /// </remarks>
    /// <exception cref="TokenizerException">A file is missing, malformed or inconsistent; the message names file and field.</exception>
    public static Llama4Tokenizer Load(string modelDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirectory);
        if (!Directory.Exists(modelDirectory))
        {
            throw new TokenizerException($"Model directory '{modelDirectory}' does not exist.");
        }

        string tokenizerPath = Path.Combine(modelDirectory, TokenizerFileName);
        string tokenizerText = ReadRequired(tokenizerPath, "the Hugging Face tokenizer definition");
        TokenizerJsonDefinition definition = TokenizerJsonDefinition.Parse(tokenizerText, tokenizerPath);

        string configPath = Path.Combine(modelDirectory, ConfigFileName);
        ModelTokenFields config = ReadModelFields(configPath, required: true, requireVocabSize: true)!;
        ModelTokenFields? generation = ReadModelFields(
            Path.Combine(modelDirectory, GenerationConfigFileName), required: false, requireVocabSize: false);
        TokenizerConfigFields? tokenizerConfig = ReadTokenizerConfig(Path.Combine(modelDirectory, TokenizerConfigFileName));

        return Create(definition, tokenizerPath, configPath, config, generation, tokenizerConfig);
    }

    private static Llama4Tokenizer Create(
        TokenizerJsonDefinition definition, string tokenizerPath, string configPath, ModelTokenFields config,
        ModelTokenFields? generation, TokenizerConfigFields? tokenizerConfig)
    {
        int vocabSize = config.VocabSize!.Value;
        var known = new HashSet<int>(definition.Vocab.Values);
        foreach ((string token, int id) in definition.Vocab)
        {
            CheckIdFits(id, vocabSize, $"{tokenizerPath}: model.vocab token '{token}'", configPath);
        }

        var addedByContent = new Dictionary<string, AddedTokenEntry>(StringComparer.Ordinal);
        var addedById = new Dictionary<int, AddedTokenEntry>();
        foreach (AddedTokenEntry token in definition.AddedTokens)
        {
            CheckIdFits(token.Id, vocabSize, $"{tokenizerPath}: added token '{token.Content}'", configPath);
            known.Add(token.Id);
            addedByContent[token.Content] = token;
            addedById[token.Id] = token;
        }

        foreach (string required in (ReadOnlySpan<string>)[BeginOfTextToken, HeaderStartToken, HeaderEndToken, EndOfTurnToken])
        {
            if (!addedByContent.TryGetValue(required, out AddedTokenEntry entry) || !entry.Special)
            {
                throw new TokenizerException(
                    $"{tokenizerPath}: the Llama 4 special token '{required}' is missing from added_tokens "
                    + "(or not marked special).");
            }
        }

        string tokenizerConfigPath = tokenizerConfig?.Path ?? TokenizerConfigFileName;
        if (tokenizerConfig is not null)
        {
            foreach ((int id, string content) in tokenizerConfig.AddedTokensDecoder)
            {
                if (!addedById.TryGetValue(id, out AddedTokenEntry entry) || entry.Content != content)
                {
                    throw new TokenizerException(
                        $"{tokenizerConfig.Path}: added_tokens_decoder['{id}'] is '{content}' but {tokenizerPath} "
                        + (addedById.TryGetValue(id, out entry) ? $"gives id {id} to '{entry.Content}'." : $"has no added token {id}."));
                }
            }
        }

        int? IdOfToken(string? content, string field)
        {
            if (content is null)
            {
                return null;
            }

            if (addedByContent.TryGetValue(content, out AddedTokenEntry entry))
            {
                return entry.Id;
            }

            if (definition.Vocab.TryGetValue(content, out int id))
            {
                return id;
            }

            throw new TokenizerException($"{tokenizerConfigPath}: {field} '{content}' is not a token of {tokenizerPath}.");
        }

        int? bos = Agree("bos", config.BosTokenId, configPath, generation?.BosTokenId, generation?.Path,
            IdOfToken(tokenizerConfig?.BosToken, "bos_token"), tokenizerConfigPath);
        int? pad = Agree("pad", config.PadTokenId, configPath, generation?.PadTokenId, generation?.Path,
            IdOfToken(tokenizerConfig?.PadToken, "pad_token"), tokenizerConfigPath);
        if (bos is null)
        {
            throw new TokenizerException(
                $"{configPath}: no bos_token_id (nor in {GenerationConfigFileName} or {TokenizerConfigFileName}'s bos_token).");
        }

        int beginOfText = addedByContent[BeginOfTextToken].Id;
        if (bos.Value != beginOfText)
        {
            throw new TokenizerException(
                $"{configPath}: bos_token_id {bos} is not {BeginOfTextToken}, which {tokenizerPath} gives id {beginOfText}.");
        }

        var eos = new SortedSet<int>(config.EosTokenIds);
        eos.UnionWith(generation?.EosTokenIds ?? []);
        if (IdOfToken(tokenizerConfig?.EosToken, "eos_token") is int eosFromTokenizer)
        {
            eos.Add(eosFromTokenizer);
        }

        if (eos.Count == 0)
        {
            throw new TokenizerException(
                $"{configPath}: no eos_token_id (nor in {GenerationConfigFileName} or {TokenizerConfigFileName}'s eos_token); "
                + "generation could never stop.");
        }

        foreach ((string what, int id) in eos.Select(id => ("eos_token_id", id)).Append(("bos_token_id", bos.Value))
            .Concat(pad is int p ? [("pad_token_id", p)] : []))
        {
            CheckIdFits(id, vocabSize, $"{configPath}: {what} {id}", configPath);
            if (!known.Contains(id))
            {
                throw new TokenizerException($"{configPath}: {what} {id} is not a token of {tokenizerPath}.");
            }
        }

        if (tokenizerConfig?.ChatTemplate is string template
            && !(template.Contains(HeaderStartToken, StringComparison.Ordinal)
                && template.Contains(EndOfTurnToken, StringComparison.Ordinal)))
        {
            throw new TokenizerException(
                $"{tokenizerConfig.Path}: chat_template is not a Llama 4 template (it lacks {HeaderStartToken} or "
                + $"{EndOfTurnToken}); this runtime renders only the Llama 4 chat format.");
        }

        return new Llama4Tokenizer(definition, vocabSize, bos.Value, pad, eos, tokenizerConfig?.ChatTemplate);
    }

    private static void CheckIdFits(int id, int vocabSize, string what, string configPath)
    {
        if (id < 0 || id >= vocabSize)
        {
            throw new TokenizerException(
                $"{what} has id {id}, outside the model's vocabulary [0, {vocabSize}) (vocab_size in {configPath}).");
        }
    }

    private static int? Agree(
        string name, int? fromConfig, string configPath, int? fromGeneration, string? generationPath,
        int? fromTokenizerConfig, string tokenizerConfigPath)
    {
        int? chosen = fromConfig ?? fromGeneration ?? fromTokenizerConfig;
        if (fromGeneration is int g && g != chosen)
        {
            throw new TokenizerException(
                $"{generationPath}: {name}_token_id {g} disagrees with {configPath}'s {chosen}.");
        }

        if (fromTokenizerConfig is int t && t != chosen)
        {
            throw new TokenizerException(
                $"{tokenizerConfigPath}: {name}_token is id {t} but {configPath} says {name}_token_id {chosen}.");
        }

        return chosen;
    }

    private static string ReadRequired(string path, string what)
    {
        if (!File.Exists(path))
        {
            throw new TokenizerException($"{path} not found: a model directory must contain {what}.");
        }

        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException e)
        {
            throw new TokenizerException($"{path}: cannot be read: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new TokenizerException($"{path}: cannot be read: {e.Message}", e);
        }
    }

    private static JsonDocument? ParseJsonFile(string path, bool required, string what)
    {
        if (!required && !File.Exists(path))
        {
            return null;
        }

        string text = ReadRequired(path, what);
        try
        {
            JsonDocument document = JsonDocument.Parse(text);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                document.Dispose();
                throw new TokenizerException($"{path}: the top level must be a JSON object.");
            }

            return document;
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{path}: malformed JSON: {e.Message}", e);
        }
    }

    private static ModelTokenFields? ReadModelFields(string path, bool required, bool requireVocabSize)
    {
        using JsonDocument? document = ParseJsonFile(path, required, "the model's config.json");
        if (document is null)
        {
            return null;
        }

        JsonElement root = document.RootElement;
        string prefix = "";
        if (root.TryGetProperty("text_config", out JsonElement text) && text.ValueKind == JsonValueKind.Object)
        {
            root = text;
            prefix = "text_config.";
        }

        int? vocabSize = OptionalInt(root, "vocab_size", path, prefix);
        if (requireVocabSize && (vocabSize is null || vocabSize <= 0))
        {
            throw new TokenizerException($"{path}: {prefix}vocab_size must be a positive integer.");
        }

        var eos = new List<int>();
        if (root.TryGetProperty("eos_token_id", out JsonElement eosElement))
        {
            if (eosElement.ValueKind == JsonValueKind.Array)
            {
                int index = 0;
                foreach (JsonElement item in eosElement.EnumerateArray())
                {
                    eos.Add(ReadId(item, path, $"{prefix}eos_token_id[{index++}]"));
                }
            }
            else if (eosElement.ValueKind != JsonValueKind.Null)
            {
                eos.Add(ReadId(eosElement, path, $"{prefix}eos_token_id"));
            }
        }

        return new ModelTokenFields(path, vocabSize, OptionalInt(root, "bos_token_id", path, prefix),
            OptionalInt(root, "pad_token_id", path, prefix), eos);
    }

    private static TokenizerConfigFields? ReadTokenizerConfig(string path)
    {
        using JsonDocument? document = ParseJsonFile(path, required: false, "tokenizer_config.json");
        if (document is null)
        {
            return null;
        }

        JsonElement root = document.RootElement;
        string? template = null;
        if (root.TryGetProperty("chat_template", out JsonElement templateElement))
        {
            template = templateElement.ValueKind switch
            {
                JsonValueKind.String => templateElement.GetString(),
                JsonValueKind.Null => null,
                JsonValueKind.Array => templateElement.EnumerateArray()
                    .Where(t => t.ValueKind == JsonValueKind.Object && t.TryGetProperty("name", out JsonElement n)
                        && n.ValueKind == JsonValueKind.String && n.GetString() == "default")
                    .Select(t => t.TryGetProperty("template", out JsonElement body) && body.ValueKind == JsonValueKind.String
                        ? body.GetString()
                        : throw new TokenizerException($"{path}: chat_template 'default' entry has no string 'template'."))
                    .FirstOrDefault()
                    ?? throw new TokenizerException($"{path}: chat_template is a list without a 'default' entry."),
                _ => throw new TokenizerException($"{path}: chat_template must be a string, not {templateElement.ValueKind}."),
            };
        }

        var decoder = new List<(int, string)>();
        if (root.TryGetProperty("added_tokens_decoder", out JsonElement decoderElement)
            && decoderElement.ValueKind != JsonValueKind.Null)
        {
            if (decoderElement.ValueKind != JsonValueKind.Object)
            {
                throw new TokenizerException($"{path}: added_tokens_decoder must be an object.");
            }

            foreach (JsonProperty entry in decoderElement.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None,
                        System.Globalization.CultureInfo.InvariantCulture, out int id))
                {
                    throw new TokenizerException($"{path}: added_tokens_decoder key '{entry.Name}' is not a token id.");
                }

                decoder.Add((id, TokenTextOf(entry.Value, path, $"added_tokens_decoder['{entry.Name}']")
                    ?? throw new TokenizerException($"{path}: added_tokens_decoder['{entry.Name}'] has no content.")));
            }
        }

        return new TokenizerConfigFields(
            path,
            TokenText(root, "bos_token", path),
            TokenText(root, "eos_token", path),
            TokenText(root, "pad_token", path),
            template,
            decoder);
    }

    private static string? TokenText(JsonElement parent, string name, string path) =>
        parent.TryGetProperty(name, out JsonElement value) ? TokenTextOf(value, path, name) : null;

    private static string? TokenTextOf(JsonElement value, string path, string field) => value.ValueKind switch
    {
        JsonValueKind.Null => null,
        JsonValueKind.String => value.GetString(),
        JsonValueKind.Object when value.TryGetProperty("content", out JsonElement content)
            && content.ValueKind == JsonValueKind.String => content.GetString(),
        _ => throw new TokenizerException($"{path}: {field} must be a token string or an object with 'content'."),
    };

    private static int? OptionalInt(JsonElement parent, string name, string path, string prefix)
    {
        if (!parent.TryGetProperty(name, out JsonElement value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return ReadId(value, path, prefix + name);
    }

    private static int ReadId(JsonElement value, string path, string field)
    {
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out int id) || id < 0)
        {
            throw new TokenizerException($"{path}: {field} must be a non-negative integer, not {value.GetRawText()}.");
        }

        return id;
    }

    private sealed record ModelTokenFields(string Path, int? VocabSize, int? BosTokenId, int? PadTokenId, List<int> EosTokenIds);

    private sealed record TokenizerConfigFields(
        string Path, string? BosToken, string? EosToken, string? PadToken, string? ChatTemplate,
        List<(int Id, string Content)> AddedTokensDecoder);
}
