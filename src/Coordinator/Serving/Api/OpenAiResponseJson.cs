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
/// <param name="CompletionTokens">Generated tokens (an EOS or stop token included).</param>
public readonly record struct Usage(int PromptTokens, int CompletionTokens)
{
    /// <summary>Prompt + completion.</summary>
    public int TotalTokens => PromptTokens + CompletionTokens;
}

/// <summary>Writes OpenAI response and stream-chunk objects with <see cref="Utf8JsonWriter"/> (field order as OpenAI's).</summary>
public static class OpenAiResponseJson
{
    /// <summary>A complete (non-streaming) response with one choice and <c>usage</c>.</summary>
    public static void WriteResponse(Utf8JsonWriter w, ResponseContext ctx, string text, string finishReason, Usage usage, int[]? promptTokenIds, int[]? tokenIds)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(ctx);
        WriteHeader(w, ctx, ctx.Kind == ApiKind.Chat ? "chat.completion" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (ctx.Kind == ApiKind.Chat)
        {
            w.WriteStartObject("message");
            w.WriteString("role", "assistant");
            w.WriteString("content", text);
            w.WriteEndObject();
        }
        else
        {
            w.WriteString("text", text);
        }
        w.WriteNull("logprobs");
        w.WriteString("finish_reason", finishReason);
        WriteTokenIds(w, promptTokenIds, tokenIds);
        w.WriteEndObject();
        w.WriteEndArray();
        WriteUsage(w, usage);
        w.WriteEndObject();
    }

    /// <summary>
    /// One stream chunk with one choice. Chat: the delta holds <c>role</c> when <paramref name="includeRole"/> and
    /// <c>content</c> when <paramref name="text"/> is not null (the final chunk sends an empty delta). With
    /// <paramref name="usageNull"/> (<c>stream_options.include_usage</c>) the chunk carries <c>"usage": null</c>.
    /// </summary>
    public static void WriteChunk(Utf8JsonWriter w, ResponseContext ctx, string? text, string? finishReason, bool includeRole, bool usageNull, int[]? promptTokenIds, int[]? tokenIds)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(ctx);
        WriteHeader(w, ctx, ctx.Kind == ApiKind.Chat ? "chat.completion.chunk" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (ctx.Kind == ApiKind.Chat)
        {
            w.WriteStartObject("delta");
            if (includeRole)
            {
                w.WriteString("role", "assistant");
            }
            if (text is not null)
            {
                w.WriteString("content", text);
            }
            w.WriteEndObject();
        }
        else
        {
            w.WriteString("text", text ?? string.Empty);
        }
        w.WriteNull("logprobs");
        if (finishReason is null)
        {
            w.WriteNull("finish_reason");
        }
        else
        {
            w.WriteString("finish_reason", finishReason);
        }
        WriteTokenIds(w, promptTokenIds, tokenIds);
        w.WriteEndObject();
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

    private static void WriteTokenIds(Utf8JsonWriter w, int[]? promptTokenIds, int[]? tokenIds)
    {
        if (promptTokenIds is not null)
        {
            WriteInts(w, "prompt_token_ids", promptTokenIds);
        }
        if (tokenIds is not null)
        {
            WriteInts(w, "token_ids", tokenIds);
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
