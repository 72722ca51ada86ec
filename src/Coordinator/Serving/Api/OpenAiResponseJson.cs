using System.Text.Json;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>Which OpenAI API a response belongs to (decides the object names and choice shape).</summary>
public enum ApiKind
{
    /// <summary><c>/v1/completions</c>: objects <c>text_completion</c>; choices carry <c>text</c>.</summary>
    Completion,

    /// <summary><c>/v1/chat/completions</c>: objects <c>chat.completion</c>/<c>chat.completion.chunk</c>; choices carry <c>message</c>/<c>delta</c>.</summary>
    Chat,
}

/// <summary>The fields every response object of one request shares.</summary>
/// <param name="Id">Response id (<c>cmpl-...</c> or <c>chatcmpl-...</c>).</param>
/// <param name="Created">Unix seconds when the request was accepted.</param>
/// <param name="Model">The served model id.</param>
/// <param name="Kind">Completion or chat.</param>
public sealed record ResponseContext(string Id, long Created, string Model, ApiKind Kind);

/// <summary>Token counts of one request.</summary>
/// <param name="PromptTokens">Prompt length in tokens.</param>
/// <param name="CompletionTokens">Generated tokens over every choice (an EOS or stop token included).</param>
public readonly record struct Usage(int PromptTokens, int CompletionTokens)
{
    /// <summary>Prompt + completion.</summary>
    public int TotalTokens => PromptTokens + CompletionTokens;
}

/// <summary>One token's log-probabilities as the API writes them.</summary>
/// <param name="Token">The token's text (special tokens as their text; a partial UTF-8 character as U+FFFD).</param>
/// <param name="Bytes">The token's bytes.</param>
/// <param name="Logprob">Its log-probability (−9999 for −∞).</param>
/// <param name="Top">The most likely tokens at that step, most likely first.</param>
/// <param name="TextOffset">Completions only: where the token's text starts in the choice's text.</param>
public sealed record LogprobEntry(string Token, byte[] Bytes, float Logprob, IReadOnlyList<(string Token, byte[] Bytes, float Logprob)> Top, int TextOffset);

/// <summary>
/// One choice of a response or chunk. Text is the content (null in a chat delta that carries none; null in a chat
/// message that only calls tools).
/// </summary>
/// <param name="Index">The choice's index.</param>
/// <param name="Text">Content text, or null.</param>
/// <param name="Finish">Finish reason (<c>stop</c>, <c>length</c>, <c>tool_calls</c>), or null while streaming.</param>
public sealed record ChoiceOutput(int Index, string? Text, string? Finish)
{
    /// <summary>Chat delta: announce <c>role: assistant</c>.</summary>
    public bool IncludeRole { get; init; }

    /// <summary>Tool calls (chat), or null.</summary>
    public IReadOnlyList<ToolCallResult>? ToolCalls { get; init; }

    /// <summary>Logprobs of the tokens this choice (or chunk) covers; null when not requested.</summary>
    public IReadOnlyList<LogprobEntry>? Logprobs { get; init; }

    /// <summary>With <c>return_token_ids</c>: the generated ids this choice (or chunk) covers.</summary>
    public int[]? TokenIds { get; init; }

    /// <summary>With <c>return_token_ids</c>: the prompt's ids (sent once per choice).</summary>
    public int[]? PromptTokenIds { get; init; }
}

/// <summary>Writes OpenAI response and stream-chunk objects with <see cref="Utf8JsonWriter"/> (field order as OpenAI's).</summary>
public static class OpenAiResponseJson
{
    /// <summary>A complete (non-streaming) response with its choices and <c>usage</c>.</summary>
    public static void WriteResponse(Utf8JsonWriter w, ResponseContext ctx, IReadOnlyList<ChoiceOutput> choices, Usage usage)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(choices);
        WriteHeader(w, ctx, ctx.Kind == ApiKind.Chat ? "chat.completion" : "text_completion");
        w.WriteStartArray("choices");
        foreach (var choice in choices)
        {
            w.WriteStartObject();
            w.WriteNumber("index", choice.Index);
            if (ctx.Kind == ApiKind.Chat)
            {
                w.WriteStartObject("message");
                w.WriteString("role", "assistant");
                WriteNullable(w, "content", choice.Text);
                WriteToolCalls(w, choice.ToolCalls, delta: false);
                w.WriteEndObject();
            }
            WriteChoiceEnd(w, ctx, choice);
        }
        w.WriteEndArray();
        WriteUsage(w, usage);
        w.WriteEndObject();
    }

    // What every choice object ends with, whole or streamed: the completions API's text (chat wrote its message or delta),
    // logprobs, finish reason and token ids; then the object is closed.
    private static void WriteChoiceEnd(Utf8JsonWriter w, ResponseContext ctx, ChoiceOutput choice)
    {
        if (ctx.Kind != ApiKind.Chat)
        {
            w.WriteString("text", choice.Text ?? string.Empty);
        }
        WriteLogprobs(w, ctx.Kind, choice.Logprobs);
        WriteNullable(w, "finish_reason", choice.Finish);
        WriteTokenIds(w, choice);
        w.WriteEndObject();
    }

    /// <summary>
    /// One stream chunk with one choice. Chat: the delta holds <c>role</c> when <see cref="ChoiceOutput.IncludeRole"/>,
    /// <c>content</c> when the text is not null and <c>tool_calls</c> when there are any (the final chunk sends an empty
    /// delta). With <paramref name="usageNull"/> (<c>stream_options.include_usage</c>) the chunk carries <c>"usage": null</c>.
    /// </summary>
    public static void WriteChunk(Utf8JsonWriter w, ResponseContext ctx, ChoiceOutput choice, bool usageNull)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(choice);
        WriteHeader(w, ctx, ctx.Kind == ApiKind.Chat ? "chat.completion.chunk" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", choice.Index);
        if (ctx.Kind == ApiKind.Chat)
        {
            w.WriteStartObject("delta");
            if (choice.IncludeRole)
            {
                w.WriteString("role", "assistant");
            }
            if (choice.Text is not null)
            {
                w.WriteString("content", choice.Text);
            }
            WriteToolCalls(w, choice.ToolCalls, delta: true);
            w.WriteEndObject();
        }
        WriteChoiceEnd(w, ctx, choice);
        w.WriteEndArray();
        if (usageNull)
        {
            w.WriteNull("usage");
        }
        w.WriteEndObject();
    }

    /// <summary>The usage chunk sent last with <c>stream_options.include_usage</c>: empty <c>choices</c> and <c>usage</c>.</summary>
    public static void WriteUsageChunk(Utf8JsonWriter w, ResponseContext ctx, Usage usage)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(ctx);
        WriteHeader(w, ctx, ctx.Kind == ApiKind.Chat ? "chat.completion.chunk" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteEndArray();
        WriteUsage(w, usage);
        w.WriteEndObject();
    }

    private static void WriteToolCalls(Utf8JsonWriter w, IReadOnlyList<ToolCallResult>? calls, bool delta)
    {
        if (calls is not { Count: > 0 })
        {
            return;
        }
        w.WriteStartArray("tool_calls");
        for (int i = 0; i < calls.Count; i++)
        {
            w.WriteStartObject();
            if (delta)
            {
                w.WriteNumber("index", i);
            }
            w.WriteString("id", calls[i].Id);
            w.WriteString("type", "function");
            w.WriteStartObject("function");
            w.WriteString("name", calls[i].Name);
            w.WriteString("arguments", calls[i].Arguments);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>
    /// Chat: <c>{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}</c>. Completions (legacy):
    /// <c>{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}</c>. Null when not requested.
    /// </summary>
    private static void WriteLogprobs(Utf8JsonWriter w, ApiKind kind, IReadOnlyList<LogprobEntry>? entries)
    {
        if (entries is null)
        {
            w.WriteNull("logprobs");
            return;
        }
        w.WriteStartObject("logprobs");
        if (kind == ApiKind.Chat)
        {
            w.WriteStartArray("content");
            foreach (var e in entries)
            {
                w.WriteStartObject();
                WriteTokenLogprob(w, e.Token, e.Logprob, e.Bytes);
                w.WriteStartArray("top_logprobs");
                foreach (var (token, bytes, logprob) in e.Top)
                {
                    w.WriteStartObject();
                    WriteTokenLogprob(w, token, logprob, bytes);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        else
        {
            w.WriteStartArray("tokens");
            foreach (var e in entries)
            {
                w.WriteStringValue(e.Token);
            }
            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var e in entries)
            {
                w.WriteNumberValue(e.Logprob);
            }
            w.WriteEndArray();
            w.WriteStartArray("top_logprobs");
            foreach (var e in entries)
            {
                w.WriteStartObject();
                var seen = new HashSet<string>(StringComparer.Ordinal);
                foreach (var (token, _, logprob) in e.Top)
                {
                    // Distinct token ids can decode to the same text (e.g. partial characters); an object keeps the first.
                    if (seen.Add(token))
                    {
                        w.WriteNumber(token, logprob);
                    }
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("text_offset");
            foreach (var e in entries)
            {
                w.WriteNumberValue(e.TextOffset);
            }
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private static void WriteTokenLogprob(Utf8JsonWriter w, string token, float logprob, byte[] bytes)
    {
        w.WriteString("token", token);
        w.WriteNumber("logprob", logprob);
        w.WriteStartArray("bytes");
        foreach (byte b in bytes)
        {
            w.WriteNumberValue(b);
        }
        w.WriteEndArray();
    }

    private static void WriteHeader(Utf8JsonWriter w, ResponseContext ctx, string objectName)
    {
        w.WriteStartObject();
        w.WriteString("id", ctx.Id);
        w.WriteString("object", objectName);
        w.WriteNumber("created", ctx.Created);
        w.WriteString("model", ctx.Model);
    }

    private static void WriteUsage(Utf8JsonWriter w, Usage usage)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", usage.PromptTokens);
        w.WriteNumber("completion_tokens", usage.CompletionTokens);
        w.WriteNumber("total_tokens", usage.TotalTokens);
        w.WriteEndObject();
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value);
        }
    }

    private static void WriteTokenIds(Utf8JsonWriter w, ChoiceOutput choice)
    {
        if (choice.PromptTokenIds is { } prompt)
        {
            WriteInts(w, "prompt_token_ids", prompt);
        }
        if (choice.TokenIds is { } ids)
        {
            WriteInts(w, "token_ids", ids);
        }
    }

    private static void WriteInts(Utf8JsonWriter w, string name, int[] values)
    {
        w.WriteStartArray(name);
        foreach (int v in values)
        {
            w.WriteNumberValue(v);
        }
        w.WriteEndArray();
    }
}
