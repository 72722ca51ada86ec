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
/// <para>
/// Tools follow the release template (<c>tools_in_user_message</c> true, its default): a leading system message gets
/// <c>Environment: ipython\n</c> before its text; the first message after it becomes a user turn holding the
/// instructions <c>Given the following functions, please respond with a JSON for a function call with its proper
/// arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters":
/// dictionary of argument name and its value}.Do not use variables.\n\n</c>, each tool as <c>tojson(indent=4)</c>
/// followed by <c>\n\n</c>, then that message's trimmed text. An assistant message with tool calls renders as
/// <c>&lt;|python_start|&gt;{content}&lt;|python_end|&gt;</c> followed by <c>{"name": "NAME", "parameters": ARGS}</c> per
/// call, where ARGS is <c>tojson</c> of the OpenAI arguments string (so a JSON string literal, as the template writes
/// it); a tool message renders as an <c>ipython</c> turn whose body is <c>tojson</c> of its content (a string literal).
/// </para>
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
    /// Adds a message's content: its text, with each image part as the <c>&lt;|image|&gt;</c> special token at its
    /// offset (the text between images stays separate pieces, as HF splits the rendered prompt at special tokens
    /// before BPE). <paramref name="trim"/> strips surrounding whitespace as the template's <c>| trim</c> does (the
    /// leading whitespace of the first piece, the trailing of the last).
    /// </summary>
    private static void Content(PartList parts, ChatMessage message, bool trim)
    {
        string text = message.Content;
        int start = 0;
        for (int k = 0; k <= message.Images.Count; k++)
        {
            int end = k < message.Images.Count ? message.Images[k].Offset : text.Length;
            string piece = text[start..end];
            if (trim && k == 0)
            {
                piece = TrimStartLikePython(piece);
            }
            if (trim && k == message.Images.Count)
            {
                piece = TrimEndLikePython(piece);
            }
            parts.Text(piece);
            if (k < message.Images.Count)
            {
                parts.Special(ImageToken, message.Images[k].Field);
            }
            start = end;
        }
    }

    /// <summary>
    /// Renders <paramref name="messages"/> as the prompt string (special tokens as their text). Encoding it with
    /// <see cref="Llama4Tokenizer.Encode"/> (special tokens parsed, no extra BOS) gives the same ids as
    /// <see cref="Llama4Tokenizer.EncodeChat"/> with <c>parseSpecialTokensInContent: true</c>.
    /// </summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="addGenerationPrompt">End with an open assistant header so the model answers next.</param>
    /// <param name="tools">Tools the model may call (rendered into the first user turn), or null.</param>
    /// <exception cref="ChatTemplateException">The conversation is not valid (<see cref="Validate"/>), or tools are given
    /// without a message to put them in.</exception>
    public static string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, IReadOnlyList<ChatTool>? tools = null) =>
        string.Concat(Parts(messages, addGenerationPrompt, tools).Select(p => p.Text));

    /// <summary>
    /// The rendered prompt as pieces: special tokens (<see cref="TemplatePart.Special"/>) and the text between them
    /// (consecutive text merged, so a tokenizer sees the same strings as in the whole render).
    /// </summary>
    internal static List<TemplatePart> Parts(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyList<ChatTool>? tools)
    {
        Validate(messages);
        var parts = new PartList();
        parts.Special(Llama4Tokenizer.BeginOfTextToken);
        int start = 0;
        if (messages[0].Role == ChatRole.System)
        {
            Header(parts, "system");
            if (tools is not null)
            {
                parts.Text("Environment: ipython\n");
            }
            parts.Text(TrimLikePython(messages[0].Content));
            parts.Special(Llama4Tokenizer.EndOfTurnToken);
            start = 1;
        }
        if (tools is not null)
        {
            if (start >= messages.Count)
            {
                throw new ChatTemplateException("messages", "needs a user message after the system message to hold the tools.");
            }
            Header(parts, "user");
            parts.Text("Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n");
            parts.Text("Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n");
            foreach (var tool in tools)
            {
                parts.Text(tool.Json).Text("\n\n");
            }
            Content(parts, messages[start], trim: true);
            parts.Special(Llama4Tokenizer.EndOfTurnToken);
            start++;
        }
        for (int i = start; i < messages.Count; i++)
        {
            var message = messages[i];
            if (message.ToolCalls is { Count: > 0 } calls)
            {
                Header(parts, "assistant");
                parts.Special(Llama4Tokenizer.PythonStartToken).Text(message.Content).Special(Llama4Tokenizer.PythonEndToken);
                foreach (var call in calls)
                {
                    parts.Text("{\"name\": \"" + call.Name + "\", \"parameters\": " + PythonJson.Dumps(call.Arguments) + "}");
                }
            }
            else if (message.Role == ChatRole.Tool)
            {
                Header(parts, "ipython");
                parts.Text(PythonJson.Dumps(message.Content));
            }
            else
            {
                Header(parts, RoleName(message.Role));
                Content(parts, message, trim: i == 0 && message.Role == ChatRole.System);
            }
            parts.Special(Llama4Tokenizer.EndOfTurnToken);
        }

        if (addGenerationPrompt)
        {
            Header(parts, "assistant");
        }

        return parts.Items;
    }

    private static void Header(PartList parts, string role) =>
        parts.Special(Llama4Tokenizer.HeaderStartToken).Text(role).Special(Llama4Tokenizer.HeaderEndToken).Text(HeaderSeparator);

    /// <summary>Collects template pieces, merging consecutive text.</summary>
    private sealed class PartList
    {
        public List<TemplatePart> Items { get; } = [];

        public PartList Special(string token, string? field = null)
        {
            Items.Add(new TemplatePart(token, true, field));
            return this;
        }

        public PartList Text(string text)
        {
            if (Items.Count > 0 && !Items[^1].Special)
            {
                Items[^1] = new TemplatePart(Items[^1].Text + text, false);
            }
            else
            {
                Items.Add(new TemplatePart(text, false));
            }
            return this;
        }
    }

    /// <summary>
    /// Reads the <c>messages</c> array of an OpenAI chat-completions request: each element an object with
    /// <c>role</c> (<c>system</c> or its newer name <c>developer</c>, <c>user</c>, <c>assistant</c>, <c>tool</c>) and
    /// <c>content</c>, either a string or an array of <c>{"type": "text", "text": "..."}</c> parts (joined with nothing
    /// between them) and, in user messages, <c>{"type": "image_url", "image_url": {"url": "...", "detail": "auto|low|high"}}</c>
    /// parts (rendered as <c>&lt;|image|&gt;</c> where they stand; the image itself is loaded by the caller); an assistant
    /// message may carry <c>tool_calls</c> instead of content, a tool message a <c>tool_call_id</c>. <c>name</c> is accepted
    /// and ignored, as the Llama 4 template ignores it; other part types, other roles and the deprecated
    /// <c>function_call</c> are rejected.
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
        ChatRole.Tool => "ipython",
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, "Unknown chat role."),
    };

    /// <summary>Jinja's <c>trim</c> is Python's <c>str.strip()</c>, whose whitespace also includes U+001C..U+001F.</summary>
    private static bool IsPythonSpace(char c) => char.IsWhiteSpace(c) || c is >= '\u001C' and <= '\u001F';

    private static string TrimLikePython(string text) => TrimEndLikePython(TrimStartLikePython(text));

    private static string TrimStartLikePython(string text)
    {
        int start = 0;
        while (start < text.Length && IsPythonSpace(text[start]))
        {
            start++;
        }
        return text[start..];
    }

    private static string TrimEndLikePython(string text)
    {
        int end = text.Length;
        while (end > 0 && IsPythonSpace(text[end - 1]))
        {
            end--;
        }
        return text[..end];
    }

    private static ChatMessage ParseMessage(JsonElement element, string path)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ChatTemplateException(path, $"must be an object, not {Describe(element)}.");
        }

        if (element.TryGetProperty("function_call", out JsonElement legacy) && legacy.ValueKind != JsonValueKind.Null)
        {
            throw new ChatTemplateException($"{path}.function_call", "is the deprecated form of tool calls and is not supported; send tool_calls.");
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
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            "tool" => ChatRole.Tool,
            string other => throw new ChatTemplateException(
                $"{path}.role", $"'{other}' is not supported; expected 'system', 'developer', 'user', 'assistant' or 'tool'."),
            null => throw new ChatTemplateException($"{path}.role", "is required."),
        };

        IReadOnlyList<ChatToolCall>? toolCalls = null;
        if (element.TryGetProperty("tool_calls", out JsonElement calls) && calls.ValueKind != JsonValueKind.Null)
        {
            if (role != ChatRole.Assistant)
            {
                throw new ChatTemplateException($"{path}.tool_calls", "is only allowed on assistant messages.");
            }
            toolCalls = ParseToolCalls(calls, $"{path}.tool_calls");
        }

        string? toolCallId = null;
        if (element.TryGetProperty("tool_call_id", out JsonElement id) && id.ValueKind != JsonValueKind.Null)
        {
            if (role != ChatRole.Tool || id.ValueKind != JsonValueKind.String)
            {
                throw new ChatTemplateException($"{path}.tool_call_id", role != ChatRole.Tool ? "is only allowed on tool messages." : $"must be a string, not {Describe(id)}.");
            }
            toolCallId = id.GetString();
        }

        bool hasContent = element.TryGetProperty("content", out JsonElement content) && content.ValueKind != JsonValueKind.Null;
        if (!hasContent && toolCalls is null)
        {
            throw new ChatTemplateException($"{path}.content", "is required.");
        }

        var images = new List<ChatImagePart>();
        string text = hasContent ? ParseContent(content, $"{path}.content", role == ChatRole.User ? images : null) : string.Empty;
        return new ChatMessage(role, text) { ToolCalls = toolCalls, ToolCallId = toolCallId, Images = images };
    }

    private static List<ChatToolCall>? ParseToolCalls(JsonElement calls, string path)
    {
        if (calls.ValueKind != JsonValueKind.Array)
        {
            throw new ChatTemplateException(path, $"must be an array, not {Describe(calls)}.");
        }
        if (calls.GetArrayLength() == 0)
        {
            return null;
        }
        var result = new List<ChatToolCall>();
        int i = 0;
        foreach (JsonElement call in calls.EnumerateArray())
        {
            string at = $"{path}[{i++}]";
            if (call.ValueKind != JsonValueKind.Object)
            {
                throw new ChatTemplateException(at, $"must be an object, not {Describe(call)}.");
            }
            if (call.TryGetProperty("type", out JsonElement type) && !(type.ValueKind == JsonValueKind.String && type.GetString() == "function"))
            {
                throw new ChatTemplateException($"{at}.type", "must be 'function'.");
            }
            string callId = call.TryGetProperty("id", out JsonElement idElement) && idElement.ValueKind == JsonValueKind.String ? idElement.GetString()! : string.Empty;
            if (!call.TryGetProperty("function", out JsonElement function) || function.ValueKind != JsonValueKind.Object)
            {
                throw new ChatTemplateException($"{at}.function", "is required and must be an object.");
            }
            if (!function.TryGetProperty("name", out JsonElement fname) || fname.ValueKind != JsonValueKind.String || fname.GetString()!.Length == 0)
            {
                throw new ChatTemplateException($"{at}.function.name", "is required and must be a non-empty string.");
            }
            if (!function.TryGetProperty("arguments", out JsonElement arguments) || arguments.ValueKind != JsonValueKind.String)
            {
                throw new ChatTemplateException($"{at}.function.arguments", "is required and must be a string (the arguments as JSON text).");
            }
            result.Add(new ChatToolCall(callId, fname.GetString()!, arguments.GetString()!));
        }
        return result;
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

/// <summary>A piece of a rendered prompt: a special token's text, or ordinary text between special tokens.</summary>
/// <param name="Text">The text.</param>
/// <param name="Special">True for a special token (encoded as its id).</param>
/// <summary>One piece of a rendered prompt: a special token (with the request field it came from, for errors) or text.</summary>
internal readonly record struct TemplatePart(string Text, bool Special, string? Field = null);
