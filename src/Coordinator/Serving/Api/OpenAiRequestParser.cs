using System.Text.Json;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// Turns OpenAI request bodies into validated records. Every field is checked for JSON type and range; an unknown field,
/// or a known OpenAI field this server cannot honour with a non-default value, is a 400 naming the field.
/// </summary>
public static class OpenAiRequestParser
{
    /// <summary>Most stop sequences per request (OpenAI's limit).</summary>
    public const int MaxStopSequences = 4;

    /// <summary>Longest accepted stop sequence, in UTF-16 code units.</summary>
    public const int MaxStopSequenceLength = 1024;

    private static readonly HashSet<string> MessageFields = new(StringComparer.Ordinal) { "role", "content", "name", "tool_calls", "tool_call_id", "function_call" };

    /// <summary>Most choices per request (<c>n</c>); the scheduler's running-sequence limit may be lower.</summary>
    public const int MaxChoices = 128;

    /// <summary>Most log-probabilities per token (<c>logprobs</c> / <c>top_logprobs</c>).</summary>
    public const int MaxLogprobs = 20;

    /// <summary>Most entries of <c>logit_bias</c> and of <c>stop_token_ids</c>.</summary>
    public const int MaxTokenEntries = 1024;

    /// <summary>Most tools per request.</summary>
    public const int MaxTools = 128;

    /// <summary>Validates a completions body; token ids must be in [0, <paramref name="vocabSize"/>).</summary>
    /// <exception cref="ApiErrorException">400 naming the first invalid field.</exception>
    public static CompletionRequestBody ParseCompletion(JsonElement root, int vocabSize)
    {
        var body = new JsonRequestObject(root);
        string model = body.RequiredString("model");
        if (!body.TryGet("prompt", out var prompt))
        {
            throw ApiErrorException.BadRequest("'prompt' is required.", "prompt");
        }
        var (text, ids) = ParsePrompt(prompt, vocabSize);
        int? maxTokens = (int?)body.Integer("max_tokens", 1, int.MaxValue);
        RequireDefault(body, "echo", v => v.ValueKind == JsonValueKind.False, "false");
        // Legacy completions: logprobs is the number of most likely tokens to return with each token's own.
        int? logprobs = (int?)body.Integer("logprobs", 0, MaxLogprobs);
        var options = ParseCommon(body, maxTokens, vocabSize) with { Logprobs = logprobs };
        RequireDefault(body, "best_of", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int b) && b == options.N, $"{options.N} (the same as n)");
        RequireDefault(body, "suffix", v => v.ValueKind == JsonValueKind.String && v.GetString()!.Length == 0, "null");
        RejectJsonResponseFormat(body);
        body.RejectUnread();
        return new CompletionRequestBody(model, text, ids, options);
    }

    /// <summary>Validates a chat completions body (messages rendered later with the Llama 4 chat template).</summary>
    /// <exception cref="ApiErrorException">400 naming the first invalid field.</exception>
    public static ChatCompletionRequestBody ParseChat(JsonElement root, int vocabSize = int.MaxValue)
    {
        var body = new JsonRequestObject(root);
        string model = body.RequiredString("model");
        if (!body.TryGet("messages", out var messagesElement))
        {
            throw ApiErrorException.BadRequest("'messages' is required.", "messages");
        }
        IReadOnlyList<ChatMessage> messages = ParseMessages(messagesElement);
        int? maxTokens = (int?)body.Integer("max_tokens", 1, int.MaxValue);
        int? maxCompletionTokens = (int?)body.Integer("max_completion_tokens", 1, int.MaxValue);
        if (maxTokens is not null && maxCompletionTokens is not null && maxTokens != maxCompletionTokens)
        {
            throw ApiErrorException.BadRequest(
                $"'max_completion_tokens' ({maxCompletionTokens}) and its deprecated alias 'max_tokens' ({maxTokens}) disagree; send one of them.",
                "max_completion_tokens");
        }
        bool logprobs = body.Boolean("logprobs") ?? false;
        int? topLogprobs = (int?)body.Integer("top_logprobs", 0, MaxLogprobs);
        if (topLogprobs is not null && !logprobs)
        {
            throw ApiErrorException.BadRequest("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs");
        }
        RejectJsonResponseFormat(body);
        var (tools, parseToolCalls) = ParseTools(body);
        bool parallel = body.Boolean("parallel_tool_calls") ?? true;
        foreach (string legacy in (ReadOnlySpan<string>)["functions", "function_call"])
        {
            RequireDefault(body, legacy, v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "null (the deprecated function-calling fields are not supported; send tools)");
        }
        var options = ParseCommon(body, maxCompletionTokens ?? maxTokens, vocabSize) with { Logprobs = logprobs ? topLogprobs ?? 0 : null };
        body.RejectUnread();
        return new ChatCompletionRequestBody(model, messages, options) { Tools = tools, ParseToolCalls = parseToolCalls, ParallelToolCalls = parallel };
    }

    // The chat messages (chat completions and /tokenize alike); a template problem becomes a 400 naming its field.
    private static IReadOnlyList<ChatMessage> ParseMessages(JsonElement messagesElement)
    {
        try
        {
            CheckMessageFields(messagesElement);
            return Llama4ChatTemplate.ParseMessages(messagesElement);
        }
        catch (ChatTemplateException ex)
        {
            throw ApiErrorException.BadRequest($"'{ex.Field}' {ex.Message[(ex.Field.Length + 2)..]}", ex.Field);
        }
    }

    /// <summary>The chat form of <c>POST /tokenize</c>: messages, tools and the template switches.</summary>
    internal sealed record TokenizeChat(IReadOnlyList<ChatMessage> Messages, IReadOnlyList<ChatTool>? Tools, bool AddGenerationPrompt, bool AddSpecialTokens);

    /// <summary>Reads the chat fields of a <c>/tokenize</c> body (the caller reads the rest and rejects unknown fields).</summary>
    internal static TokenizeChat ParseTokenizeChat(JsonRequestObject body, JsonElement messagesElement)
    {
        IReadOnlyList<ChatMessage> messages = ParseMessages(messagesElement);
        bool addGenerationPrompt = body.Boolean("add_generation_prompt") ?? true;
        bool addSpecialTokens = body.Boolean("add_special_tokens") ?? false;
        var (tools, _) = ParseTools(body);
        return new TokenizeChat(messages, tools, addGenerationPrompt, addSpecialTokens);
    }

    /// <summary>A non-empty-or-empty JSON array of token ids in [0, <paramref name="vocabSize"/>).</summary>
    internal static int[] ParseTokens(JsonElement array, string path, int vocabSize) => array.GetArrayLength() == 0 ? [] : ParseTokenIds(array, path, vocabSize);

    private static GenerationOptions ParseCommon(JsonRequestObject body, int? maxTokens, int vocabSize)
    {
        float temperature = (float)(body.Number("temperature", 0, 2) ?? 1.0);
        float topP = (float)(body.Number("top_p", 0, 1, minExclusive: true) ?? 1.0);
        // vLLM's convention: -1 (and 0) disable top-k.
        int topK = (int)(body.Integer("top_k", -1, int.MaxValue) ?? 0);
        ulong? seed = ParseSeed(body);
        int n = (int)(body.Integer("n", 1, MaxChoices) ?? 1);
        float presence = (float)(body.Number("presence_penalty", -2, 2) ?? 0);
        float frequency = (float)(body.Number("frequency_penalty", -2, 2) ?? 0);
        float repetition = (float)(body.Number("repetition_penalty", 0, 2, minExclusive: true) ?? 1);
        var bias = ParseLogitBias(body, vocabSize);
        int minTokens = (int)(body.Integer("min_tokens", 0, int.MaxValue) ?? 0);
        if (maxTokens is int max && minTokens > max)
        {
            throw ApiErrorException.BadRequest($"'min_tokens' ({minTokens}) must not exceed max_tokens ({max}).", "min_tokens");
        }
        bool ignoreEos = body.Boolean("ignore_eos") ?? false;
        int[] stopTokenIds = ParseTokenIdList(body, "stop_token_ids", vocabSize);
        _ = body.OptionalString("user");
        var stop = ParseStop(body);
        bool stream = body.Boolean("stream") ?? false;
        bool includeUsage = false;
        if (body.TryGet("stream_options", out var streamOptions))
        {
            if (!stream)
            {
                throw ApiErrorException.BadRequest("'stream_options' is only allowed when 'stream' is true.", "stream_options");
            }
            var so = new JsonRequestObject(streamOptions, "stream_options");
            includeUsage = so.Boolean("include_usage") ?? false;
            so.RejectUnread();
        }
        bool returnTokenIds = body.Boolean("return_token_ids") ?? false;
        var sampling = new SamplingParams(temperature, topP, Math.Max(0, topK), seed)
        {
            PresencePenalty = presence,
            FrequencyPenalty = frequency,
            RepetitionPenalty = repetition,
            LogitBias = bias,
            MinTokens = minTokens,
        };
        return new GenerationOptions(maxTokens, sampling, stop, stream, includeUsage, returnTokenIds)
        {
            N = n,
            IgnoreEos = ignoreEos,
            StopTokenIds = stopTokenIds,
        };
    }

    /// <summary><c>logit_bias</c>: an object mapping token ids (as strings) to a bias in [-100, 100].</summary>
    private static Dictionary<int, float>? ParseLogitBias(JsonRequestObject body, int vocabSize)
    {
        if (!body.TryGet("logit_bias", out var value))
        {
            return null;
        }
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw ApiErrorException.BadRequest($"'logit_bias' must be an object mapping token ids to numbers, got {JsonRequestObject.Describe(value)}.", "logit_bias");
        }
        var bias = new Dictionary<int, float>();
        foreach (var entry in value.EnumerateObject())
        {
            string path = $"logit_bias.{entry.Name}";
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id) || id >= vocabSize)
            {
                throw ApiErrorException.BadRequest($"'logit_bias' key '{Truncate(entry.Name)}' must be a token id in [0, {vocabSize}).", path);
            }
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetDouble(out double b) || !double.IsFinite(b) || b < -100 || b > 100)
            {
                throw ApiErrorException.BadRequest($"'{path}' must be a number between -100 and 100, got {Truncate(entry.Value.GetRawText())}.", path);
            }
            if (!bias.TryAdd(id, (float)b))
            {
                throw ApiErrorException.BadRequest($"'logit_bias' names token {id} twice.", path);
            }
            if (bias.Count > MaxTokenEntries)
            {
                throw ApiErrorException.BadRequest($"'logit_bias' may hold at most {MaxTokenEntries} entries.", "logit_bias");
            }
        }
        return bias.Count == 0 ? null : bias;
    }

    private static int[] ParseTokenIdList(JsonRequestObject body, string name, int vocabSize)
    {
        if (!body.TryGet(name, out var value))
        {
            return [];
        }
        if (value.ValueKind != JsonValueKind.Array)
        {
            throw ApiErrorException.BadRequest($"'{name}' must be an array of token ids, got {JsonRequestObject.Describe(value)}.", name);
        }
        if (value.GetArrayLength() > MaxTokenEntries)
        {
            throw ApiErrorException.BadRequest($"'{name}' may hold at most {MaxTokenEntries} token ids.", name);
        }
        return value.GetArrayLength() == 0 ? [] : ParseTokenIds(value, name, vocabSize);
    }

    /// <summary>
    /// <c>response_format</c>: only <c>{"type": "text"}</c>. JSON-constrained decoding (<c>json_object</c>,
    /// <c>json_schema</c>) is not implemented, so those are refused rather than answered with unconstrained text.
    /// </summary>
    private static void RejectJsonResponseFormat(JsonRequestObject body)
    {
        if (!body.TryGet("response_format", out var format))
        {
            return;
        }
        if (format.ValueKind != JsonValueKind.Object || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            throw ApiErrorException.BadRequest("'response_format' must be an object with a string 'type'.", "response_format");
        }
        string kind = type.GetString()!;
        if (kind == "text" && format.EnumerateObject().Count() == 1)
        {
            return;
        }
        if (kind is "json_object" or "json_schema")
        {
            throw ApiErrorException.BadRequest(
                $"'response_format' type '{kind}' is not supported by this server: it does not implement JSON-constrained decoding, and unconstrained text could break the format. Send {{\"type\": \"text\"}} or leave it out.",
                "response_format", "unsupported_parameter");
        }
        throw ApiErrorException.BadRequest($"'response_format.type' must be 'text', 'json_object' or 'json_schema', got '{Truncate(kind)}'.", "response_format.type");
    }

    /// <summary>
    /// <c>tools</c> (function tools: name of 1–64 letters, digits, <c>_</c> or <c>-</c>, optional description, parameters
    /// object and strict flag), <c>tool_choice</c> (<c>auto</c> or <c>none</c>; <c>required</c> and a named function
    /// would need constrained decoding and are refused).
    /// </summary>
    private static (IReadOnlyList<ChatTool>? Tools, bool Parse) ParseTools(JsonRequestObject body)
    {
        List<ChatTool>? tools = null;
        if (body.TryGet("tools", out var toolsElement))
        {
            if (toolsElement.ValueKind != JsonValueKind.Array)
            {
                throw ApiErrorException.BadRequest($"'tools' must be an array, got {JsonRequestObject.Describe(toolsElement)}.", "tools");
            }
            if (toolsElement.GetArrayLength() > MaxTools)
            {
                throw ApiErrorException.BadRequest($"'tools' may hold at most {MaxTools} tools.", "tools");
            }
            tools = [];
            var names = new HashSet<string>(StringComparer.Ordinal);
            int i = 0;
            foreach (var t in toolsElement.EnumerateArray())
            {
                string path = $"tools[{i++}]";
                var tool = new JsonRequestObject(t, path);
                string type = tool.RequiredString("type");
                if (type != "function")
                {
                    throw ApiErrorException.BadRequest($"'{path}.type' must be 'function', got '{Truncate(type)}'.", $"{path}.type");
                }
                if (!tool.TryGet("function", out var functionElement))
                {
                    throw ApiErrorException.BadRequest($"'{path}.function' is required.", $"{path}.function");
                }
                var function = new JsonRequestObject(functionElement, $"{path}.function");
                string name = function.RequiredString("name");
                if (name.Length > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
                {
                    throw ApiErrorException.BadRequest($"'{path}.function.name' must be 1-64 letters, digits, '_' or '-', got '{Truncate(name)}'.", $"{path}.function.name");
                }
                if (!names.Add(name))
                {
                    throw ApiErrorException.BadRequest($"'{path}.function.name' '{name}' is defined twice.", $"{path}.function.name");
                }
                _ = function.OptionalString("description");
                if (function.TryGet("parameters", out var parameters) && parameters.ValueKind != JsonValueKind.Object)
                {
                    throw ApiErrorException.BadRequest($"'{path}.function.parameters' must be a JSON Schema object, got {JsonRequestObject.Describe(parameters)}.", $"{path}.function.parameters");
                }
                _ = function.Boolean("strict");
                function.RejectUnread();
                tool.RejectUnread();
                tools.Add(new ChatTool(name, PythonJson.Dumps(t, indent: 4)));
            }
            if (tools.Count == 0)
            {
                tools = null;
            }
        }
        string choice = "auto";
        if (body.TryGet("tool_choice", out var choiceElement))
        {
            if (choiceElement.ValueKind == JsonValueKind.String && choiceElement.GetString() is "auto" or "none")
            {
                choice = choiceElement.GetString()!;
            }
            else if (choiceElement.ValueKind == JsonValueKind.String && choiceElement.GetString() == "required" || choiceElement.ValueKind == JsonValueKind.Object)
            {
                throw ApiErrorException.BadRequest(
                    "'tool_choice' 'required' or a named function is not supported by this server (forcing a call needs constrained decoding); send 'auto' or 'none'.",
                    "tool_choice", "unsupported_parameter");
            }
            else
            {
                throw ApiErrorException.BadRequest($"'tool_choice' must be 'auto', 'none', 'required' or an object, got {Truncate(choiceElement.GetRawText())}.", "tool_choice");
            }
        }
        return (tools, tools is not null && choice == "auto");
    }

    private static (string? Text, int[]? Ids) ParsePrompt(JsonElement prompt, int vocabSize)
    {
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                string text = prompt.GetString()!;
                return text.Length == 0 ? throw ApiErrorException.BadRequest("'prompt' must not be empty.", "prompt") : (text, null);
            case JsonValueKind.Array:
                int count = prompt.GetArrayLength();
                if (count == 0)
                {
                    throw ApiErrorException.BadRequest("'prompt' must not be empty.", "prompt");
                }
                var first = prompt[0];
                if (first.ValueKind == JsonValueKind.Number)
                {
                    return (null, ParseTokenIds(prompt, "prompt", vocabSize));
                }
                if (first.ValueKind is JsonValueKind.String or JsonValueKind.Array)
                {
                    if (count != 1)
                    {
                        throw ApiErrorException.BadRequest($"'prompt' holds {count} prompts; this server takes one prompt per request.", "prompt");
                    }
                    if (first.ValueKind == JsonValueKind.Array)
                    {
                        if (first.GetArrayLength() == 0)
                        {
                            throw ApiErrorException.BadRequest("'prompt[0]' must not be empty.", "prompt[0]");
                        }
                        return (null, ParseTokenIds(first, "prompt[0]", vocabSize));
                    }
                    return ParsePrompt(first, vocabSize);
                }
                throw ApiErrorException.BadRequest($"'prompt[0]' must be a token id, a string or an array of token ids, got {JsonRequestObject.Describe(first)}.", "prompt[0]");
            default:
                throw ApiErrorException.BadRequest($"'prompt' must be a string or an array of token ids, got {JsonRequestObject.Describe(prompt)}.", "prompt");
        }
    }

    private static int[] ParseTokenIds(JsonElement array, string path, int vocabSize)
    {
        var ids = new int[array.GetArrayLength()];
        int i = 0;
        foreach (var e in array.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0 || id >= vocabSize)
            {
                string got = e.ValueKind == JsonValueKind.Number ? e.GetRawText() : JsonRequestObject.Describe(e);
                throw ApiErrorException.BadRequest($"'{path}[{i}]' must be a token id in [0, {vocabSize}), got {got}.", $"{path}[{i}]");
            }
            ids[i++] = id;
        }
        return ids;
    }

    private static ulong? ParseSeed(JsonRequestObject body)
    {
        if (!body.TryGet("seed", out var seed))
        {
            return null;
        }
        if (seed.ValueKind == JsonValueKind.Number)
        {
            if (seed.TryGetUInt64(out ulong u))
            {
                return u;
            }
            if (seed.TryGetInt64(out long l))
            {
                // A negative seed is a valid OpenAI seed; its two's-complement bits still pick one reproducible stream.
                return unchecked((ulong)l);
            }
        }
        string got = seed.ValueKind == JsonValueKind.Number ? seed.GetRawText() : JsonRequestObject.Describe(seed);
        throw ApiErrorException.BadRequest($"'seed' must be an integer between {long.MinValue} and {ulong.MaxValue}, got {got}.", "seed");
    }

    private static string[] ParseStop(JsonRequestObject body)
    {
        if (!body.TryGet("stop", out var stop))
        {
            return [];
        }
        if (stop.ValueKind == JsonValueKind.String)
        {
            return [CheckStop(stop.GetString()!, "stop")];
        }
        if (stop.ValueKind != JsonValueKind.Array)
        {
            throw ApiErrorException.BadRequest($"'stop' must be a string or an array of up to {MaxStopSequences} strings, got {JsonRequestObject.Describe(stop)}.", "stop");
        }
        int count = stop.GetArrayLength();
        if (count > MaxStopSequences)
        {
            throw ApiErrorException.BadRequest($"'stop' may hold at most {MaxStopSequences} sequences, got {count}.", "stop");
        }
        var result = new string[count];
        for (int i = 0; i < count; i++)
        {
            var e = stop[i];
            if (e.ValueKind != JsonValueKind.String)
            {
                throw ApiErrorException.BadRequest($"'stop[{i}]' must be a string, got {JsonRequestObject.Describe(e)}.", $"stop[{i}]");
            }
            result[i] = CheckStop(e.GetString()!, $"stop[{i}]");
        }
        return result;
    }

    private static string CheckStop(string s, string path)
    {
        if (s.Length == 0)
        {
            throw ApiErrorException.BadRequest($"'{path}' must not be an empty string.", path);
        }
        if (s.Length > MaxStopSequenceLength)
        {
            throw ApiErrorException.BadRequest($"'{path}' is {s.Length} characters long; the limit is {MaxStopSequenceLength}.", path);
        }
        return s;
    }

    private static void CheckMessageFields(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array)
        {
            return;
        }
        int i = 0;
        foreach (var message in messages.EnumerateArray())
        {
            if (message.ValueKind == JsonValueKind.Object)
            {
                var seen = new HashSet<string>(StringComparer.Ordinal);
                foreach (var p in message.EnumerateObject())
                {
                    if (!seen.Add(p.Name))
                    {
                        throw new ChatTemplateException($"messages[{i}].{p.Name}", "appears twice.");
                    }
                    if (!MessageFields.Contains(p.Name))
                    {
                        throw new ChatTemplateException($"messages[{i}].{p.Name}", "is not a recognized message field.");
                    }
                }
            }
            i++;
        }
    }

    /// <summary>Accepts a field this server supports only at its default: absent, null or <paramref name="isDefault"/>.</summary>
    private static void RequireDefault(JsonRequestObject body, string name, Func<JsonElement, bool> isDefault, string supported)
    {
        if (body.TryGet(name, out var value) && !isDefault(value))
        {
            throw ApiErrorException.BadRequest($"'{name}' is not supported by this server; send {supported} or leave it out (got {Truncate(value.GetRawText())}).", name, "unsupported_parameter");
        }
    }

    private static string Truncate(string s) => s.Length <= 64 ? s : s[..64] + "...";
}
