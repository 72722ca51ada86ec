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
        RequireDefault(body, "logprobs", _ => false, "null");
        RequireDefault(body, "best_of", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int b) && b == 1, "1");
        RequireDefault(body, "suffix", v => v.ValueKind == JsonValueKind.String && v.GetString()!.Length == 0, "null");
        var options = ParseCommon(body, maxTokens);
        body.RejectUnread();
        return new CompletionRequestBody(model, text, ids, options);
    }

    /// <summary>Validates a chat completions body (messages rendered later with the Llama 4 chat template).</summary>
    /// <exception cref="ApiErrorException">400 naming the first invalid field.</exception>
    public static ChatCompletionRequestBody ParseChat(JsonElement root)
    {
        var body = new JsonRequestObject(root);
        string model = body.RequiredString("model");
        if (!body.TryGet("messages", out var messagesElement))
        {
            throw ApiErrorException.BadRequest("'messages' is required.", "messages");
        }
        IReadOnlyList<ChatMessage> messages;
        try
        {
            CheckMessageFields(messagesElement);
            messages = Llama4ChatTemplate.ParseMessages(messagesElement);
        }
        catch (ChatTemplateException ex)
        {
            throw ApiErrorException.BadRequest($"'{ex.Field}' {ex.Message[(ex.Field.Length + 2)..]}", ex.Field);
        }
        int? maxTokens = (int?)body.Integer("max_tokens", 1, int.MaxValue);
        int? maxCompletionTokens = (int?)body.Integer("max_completion_tokens", 1, int.MaxValue);
        if (maxTokens is not null && maxCompletionTokens is not null && maxTokens != maxCompletionTokens)
        {
            throw ApiErrorException.BadRequest(
                $"'max_completion_tokens' ({maxCompletionTokens}) and its deprecated alias 'max_tokens' ({maxTokens}) disagree; send one of them.",
                "max_completion_tokens");
        }
        RequireDefault(body, "logprobs", v => v.ValueKind == JsonValueKind.False, "false");
        RequireDefault(body, "top_logprobs", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int t) && t == 0, "null");
        RequireDefault(body, "response_format", IsTextResponseFormat, "{\"type\": \"text\"}");
        foreach (string tools in (ReadOnlySpan<string>)["tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"])
        {
            RequireDefault(body, tools, v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "null (tool calling is not supported)");
        }
        var options = ParseCommon(body, maxCompletionTokens ?? maxTokens);
        body.RejectUnread();
        return new ChatCompletionRequestBody(model, messages, options);
    }

    private static GenerationOptions ParseCommon(JsonRequestObject body, int? maxTokens)
    {
        float temperature = (float)(body.Number("temperature", 0, 2) ?? 1.0);
        float topP = (float)(body.Number("top_p", 0, 1, minExclusive: true) ?? 1.0);
        // vLLM's convention: -1 (and 0) disable top-k.
        int topK = (int)(body.Integer("top_k", -1, int.MaxValue) ?? 0);
        ulong? seed = ParseSeed(body);
        long n = body.Integer("n", long.MinValue, long.MaxValue) ?? 1;
        if (n != 1)
        {
            throw ApiErrorException.BadRequest($"'n' must be 1 (this server returns one choice per request), got {n}.", "n");
        }
        RequireDefault(body, "presence_penalty", IsZero, "0");
        RequireDefault(body, "frequency_penalty", IsZero, "0");
        RequireDefault(body, "logit_bias", v => v.ValueKind == JsonValueKind.Object && !v.EnumerateObject().Any(), "null");
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
        return new GenerationOptions(maxTokens, new SamplingParams(temperature, topP, Math.Max(0, topK), seed), stop, stream, includeUsage, returnTokenIds);
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

    private static bool IsZero(JsonElement v) => v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == 0;

    private static bool IsTextResponseFormat(JsonElement v) =>
        v.ValueKind == JsonValueKind.Object && v.EnumerateObject().Count() == 1
        && v.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text";

    private static string Truncate(string s) => s.Length <= 64 ? s : s[..64] + "...";
}
