using System.Text;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// The Llama 4 instruct chat format, rendered in code (not by a Jinja engine). It produces what the <c>chat_template</c>
/// shipped with the Llama 4 releases produces for text-only conversations without tools:
/// <code>
/// &lt;|begin_of_text|&gt;&lt;|header_start|&gt;system&lt;|header_end|&gt;\n\n{system, trimmed}&lt;|eot|&gt;
/// &lt;|header_start|&gt;user&lt;|header_end|&gt;\n\n{content}&lt;|eot|&gt;
/// &lt;|header_start|&gt;assistant&lt;|header_end|&gt;\n\n{content}&lt;|eot|&gt;
/// ...
/// &lt;|header_start|&gt;assistant&lt;|header_end|&gt;\n\n        (the generation prompt)
/// </code>
/// (without the line breaks shown here). Only a system message at index 0 is trimmed of surrounding whitespace, as
/// in the release template; every other content is kept verbatim; no default system prompt or date is added.
/// </summary>
public static class Llama4ChatTemplate
{
    /// <summary>What follows <c>&lt;|header_end|&gt;</c> before a message's content.</summary>
    internal const string HeaderSeparator = "\n\n";

    /// <summary>What an image part renders as (the release template's <c>{{ '&lt;|image|&gt;' }}</c>).</summary>
    public const string ImageToken = "<|image|>";

    /// <summary>
    /// Checks a conversation: at least one message, none null, each a defined <see cref="ChatRole"/> with non-null
    /// content.
    /// </summary>
    /// <exception cref="ChatTemplateException">The first problem found, naming <c>messages[i]</c>.</exception>
    public static void Validate(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            throw new ChatTemplateException("messages", "must contain at least one message.");
        }

        for (int i = 0; i < messages.Count; i++)
        {
            ChatMessage? message = messages[i];
            if (message is null)
            {
                throw new ChatTemplateException($"messages[{i}]", "must be a message object, not null.");
            }

            if (!Enum.IsDefined(message.Role))
            {
                throw new ChatTemplateException($"messages[{i}].role", $"unknown role value {(int)message.Role}.");
            }

            if (message.Content is null)
            {
                throw new ChatTemplateException($"messages[{i}].content", "is required.");
            }

            int previous = 0;
            foreach (ChatImagePart image in message.Images ?? [])
            {
                if (message.Role != ChatRole.User)
                {
                    throw new ChatTemplateException(image.Field, "image parts are only allowed in user messages.");
                }

                if (image.Offset < previous || image.Offset > message.Content.Length)
                {
                    throw new ChatTemplateException(image.Field, $"image offset {image.Offset} is outside the message text or out of order.");
                }

                previous = image.Offset;
            }
        }
    }

    /// <summary>
    /// The content segments of message <paramref name="index"/> as rendered: the text between image parts (possibly
    /// empty), one more segment than there are images; an image renders as <c>&lt;|image|&gt;</c> between two segments.
    /// </summary>
    internal static IReadOnlyList<string> RenderedSegments(IReadOnlyList<ChatMessage> messages, int index)
    {
        ChatMessage message = messages[index];
        string text = RenderedContent(messages, index);
        if (message.Images.Count == 0)
        {
            return [text];
        }

        var segments = new List<string>(message.Images.Count + 1);
        int start = 0;
        foreach (ChatImagePart image in message.Images)
        {
            segments.Add(text[start..image.Offset]);
            start = image.Offset;
        }

        segments.Add(text[start..]);
        return segments;
    }

    /// <summary>
    /// Renders <paramref name="messages"/> as the prompt string (special tokens as their text). Encoding it with
    /// <see cref="Llama4Tokenizer.Encode"/> (special tokens parsed, no extra BOS) gives the same ids as
    /// <see cref="Llama4Tokenizer.EncodeChat"/> with <c>parseSpecialTokensInContent: true</c>.
    /// </summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="addGenerationPrompt">End with an open assistant header so the model answers next.</param>
    /// <exception cref="ChatTemplateException">The conversation is not valid (<see cref="Validate"/>).</exception>
    public static string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        Validate(messages);
        var prompt = new StringBuilder(Llama4Tokenizer.BeginOfTextToken);
        for (int i = 0; i < messages.Count; i++)
        {
            AppendHeader(prompt, RoleName(messages[i].Role));
            prompt.AppendJoin(ImageToken, RenderedSegments(messages, i)).Append(Llama4Tokenizer.EndOfTurnToken);
        }

        if (addGenerationPrompt)
        {
            AppendHeader(prompt, "assistant");
        }

        return prompt.ToString();
    }

    /// <summary>
    /// Reads the <c>messages</c> array of an OpenAI chat-completions request: each element an object with
    /// <c>role</c> (<c>system</c>, <c>user</c> or <c>assistant</c>) and <c>content</c>, either a string or an array of
    /// <c>{"type": "text", "text": "..."}</c> parts (joined with nothing between them) and, in user messages,
    /// <c>{"type": "image_url", "image_url": {"url": "...", "detail": "auto|low|high"}}</c> parts (rendered as
    /// <c>&lt;|image|&gt;</c> where they stand; the image itself is loaded by the caller). <c>name</c> is accepted and
    /// ignored, as the Llama 4 template ignores it; tool calls, other part types and other roles are rejected.
    /// </summary>
    /// <exception cref="ChatTemplateException">The first invalid field, named by its JSON path.</exception>
    public static IReadOnlyList<ChatMessage> ParseMessages(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array)
        {
            throw new ChatTemplateException("messages", $"must be an array, not {Describe(messages)}.");
        }

        var result = new List<ChatMessage>(messages.GetArrayLength());
        int index = 0;
        foreach (JsonElement element in messages.EnumerateArray())
        {
            result.Add(ParseMessage(element, $"messages[{index}]"));
            index++;
        }

        Validate(result);
        return result;
    }

    internal static string RoleName(ChatRole role) => role switch
    {
        ChatRole.System => "system",
        ChatRole.User => "user",
        ChatRole.Assistant => "assistant",
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, "Unknown chat role."),
    };

    /// <summary>Message <paramref name="index"/>'s content as the template renders it.</summary>
    internal static string RenderedContent(IReadOnlyList<ChatMessage> messages, int index)
    {
        ChatMessage message = messages[index];
        return index == 0 && message.Role == ChatRole.System ? TrimLikePython(message.Content) : message.Content;
    }

    private static void AppendHeader(StringBuilder prompt, string role) =>
        prompt.Append(Llama4Tokenizer.HeaderStartToken).Append(role).Append(Llama4Tokenizer.HeaderEndToken)
            .Append(HeaderSeparator);

    /// <summary>Jinja's <c>trim</c> is Python's <c>str.strip()</c>, whose whitespace also includes U+001C..U+001F.</summary>
    private static string TrimLikePython(string text)
    {
        static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is >= '\u001C' and <= '\u001F';
        int start = 0;
        int end = text.Length;
        while (start < end && IsSpace(text[start]))
        {
            start++;
        }

        while (end > start && IsSpace(text[end - 1]))
        {
            end--;
        }

        return text[start..end];
    }

    private static ChatMessage ParseMessage(JsonElement element, string path)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ChatTemplateException(path, $"must be an object, not {Describe(element)}.");
        }

        foreach (string unsupported in (ReadOnlySpan<string>)["tool_calls", "tool_call_id", "function_call"])
        {
            if (element.TryGetProperty(unsupported, out JsonElement value) && value.ValueKind != JsonValueKind.Null
                && !(value.ValueKind == JsonValueKind.Array && value.GetArrayLength() == 0))
            {
                throw new ChatTemplateException($"{path}.{unsupported}", "tool calling is not supported.");
            }
        }

        if (element.TryGetProperty("name", out JsonElement name) && name.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
        {
            throw new ChatTemplateException($"{path}.name", $"must be a string, not {Describe(name)}.");
        }

        if (!element.TryGetProperty("role", out JsonElement roleElement) || roleElement.ValueKind != JsonValueKind.String)
        {
            throw new ChatTemplateException($"{path}.role", "is required and must be a string.");
        }

        ChatRole role = roleElement.GetString() switch
        {
            "system" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            string other => throw new ChatTemplateException(
                $"{path}.role", $"'{other}' is not supported; expected 'system', 'user' or 'assistant'."),
            null => throw new ChatTemplateException($"{path}.role", "is required."),
        };

        if (!element.TryGetProperty("content", out JsonElement content) || content.ValueKind == JsonValueKind.Null)
        {
            throw new ChatTemplateException($"{path}.content", "is required.");
        }

        var images = new List<ChatImagePart>();
        string text = ParseContent(content, $"{path}.content", role == ChatRole.User ? images : null);
        return new ChatMessage(role, text) { Images = images };
    }

    private static string ParseContent(JsonElement content, string path, List<ChatImagePart>? images)
    {
        if (content.ValueKind == JsonValueKind.String)
        {
            return content.GetString()!;
        }

        if (content.ValueKind != JsonValueKind.Array)
        {
            throw new ChatTemplateException(path, $"must be a string or an array of content parts, not {Describe(content)}.");
        }

        if (content.GetArrayLength() == 0)
        {
            throw new ChatTemplateException(path, "must contain at least one part.");
        }

        var text = new StringBuilder();
        int index = 0;
        foreach (JsonElement part in content.EnumerateArray())
        {
            string partPath = $"{path}[{index}]";
            if (part.ValueKind != JsonValueKind.Object)
            {
                throw new ChatTemplateException(partPath, $"must be an object, not {Describe(part)}.");
            }

            if (!part.TryGetProperty("type", out JsonElement type) || type.ValueKind != JsonValueKind.String)
            {
                throw new ChatTemplateException($"{partPath}.type", "is required and must be a string.");
            }

            if (type.GetString() == "image_url")
            {
                if (images is null)
                {
                    throw new ChatTemplateException($"{partPath}.type", "'image_url' parts are only allowed in user messages.");
                }

                images.Add(ParseImagePart(part, partPath, text.Length));
                index++;
                continue;
            }

            if (type.GetString() != "text")
            {
                throw new ChatTemplateException(
                    $"{partPath}.type", $"'{type.GetString()}' is not supported; only 'text' and 'image_url' parts are.");
            }

            if (!part.TryGetProperty("text", out JsonElement partText) || partText.ValueKind != JsonValueKind.String)
            {
                throw new ChatTemplateException($"{partPath}.text", "is required and must be a string.");
            }

            text.Append(partText.GetString());
            index++;
        }

        return text.ToString();
    }

    /// <summary><c>{"type": "image_url", "image_url": {"url": "...", "detail": "auto|low|high"}}</c>, nothing else.</summary>
    private static ChatImagePart ParseImagePart(JsonElement part, string partPath, int offset)
    {
        foreach (JsonProperty p in part.EnumerateObject())
        {
            if (p.Name is not ("type" or "image_url"))
            {
                throw new ChatTemplateException($"{partPath}.{p.Name}", "is not a field of an image_url part.");
            }
        }

        if (!part.TryGetProperty("image_url", out JsonElement imageUrl) || imageUrl.ValueKind != JsonValueKind.Object)
        {
            throw new ChatTemplateException($"{partPath}.image_url", "is required and must be an object with a 'url'.");
        }

        string? url = null;
        string? detail = null;
        foreach (JsonProperty p in imageUrl.EnumerateObject())
        {
            switch (p.Name)
            {
                case "url" when p.Value.ValueKind == JsonValueKind.String && p.Value.GetString()!.Length > 0:
                    url = p.Value.GetString();
                    break;
                case "url":
                    throw new ChatTemplateException($"{partPath}.image_url.url", "must be a non-empty string (a data:image/...;base64 URL or an http(s) URL).");
                case "detail" when p.Value.ValueKind == JsonValueKind.Null:
                    break;
                case "detail" when p.Value.ValueKind == JsonValueKind.String && p.Value.GetString() is "auto" or "low" or "high":
                    detail = p.Value.GetString();
                    break;
                case "detail":
                    throw new ChatTemplateException($"{partPath}.image_url.detail", "must be 'auto', 'low' or 'high'.");
                default:
                    throw new ChatTemplateException($"{partPath}.image_url.{p.Name}", "is not a field of image_url.");
            }
        }

        return url is null
            ? throw new ChatTemplateException($"{partPath}.image_url.url", "is required.")
            : new ChatImagePart(offset, url, detail, partPath);
    }

    private static string Describe(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => element.ValueKind.ToString(),
    };
}
