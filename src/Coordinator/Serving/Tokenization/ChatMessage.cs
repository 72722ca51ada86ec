namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>The author of a chat message.</summary>
public enum ChatRole
{
    /// <summary><c>system</c>: instructions that frame the conversation.</summary>
    System,

    /// <summary><c>user</c>: the person's turn.</summary>
    User,

    /// <summary><c>assistant</c>: the model's turn (earlier answers, or a prefix it should continue).</summary>
    Assistant,

    /// <summary><c>tool</c>: a tool's result, rendered as an <c>ipython</c> turn.</summary>
    Tool,
}

/// <summary>One message of a conversation: a role and its text (an OpenAI content-part list already joined).</summary>
/// <param name="Role">Who wrote it.</param>
/// <param name="Content">The text, exactly as rendered (the Llama 4 format trims only a leading system message); empty
/// for an assistant message that only calls tools.</param>
public sealed record ChatMessage(ChatRole Role, string Content)
{
    /// <summary>An assistant message's tool calls (null or non-empty).</summary>
    public IReadOnlyList<ChatToolCall>? ToolCalls { get; init; }

    /// <summary>A tool message's <c>tool_call_id</c> (not rendered by the Llama 4 template).</summary>
    public string? ToolCallId { get; init; }

    /// <summary>
    /// The message's image parts, in order: each renders as one <c>&lt;|image|&gt;</c> token at its
    /// <see cref="ChatImagePart.Offset"/> of <see cref="Content"/> (user messages only). Empty for text-only messages.
    /// </summary>
    public IReadOnlyList<ChatImagePart> Images { get; init; } = [];

    /// <summary>Value equality, the tool calls and image parts compared element by element.</summary>
    public bool Equals(ChatMessage? other) =>
        other is not null && Role == other.Role && Content == other.Content && ToolCallId == other.ToolCallId
        && (ToolCalls ?? []).SequenceEqual(other.ToolCalls ?? []) && Images.SequenceEqual(other.Images);

    /// <inheritdoc />
    public override int GetHashCode() => HashCode.Combine(Role, Content, ToolCallId, ToolCalls?.Count ?? 0, Images.Count);

    /// <summary>A <see cref="ChatRole.System"/> message.</summary>
    public static ChatMessage System(string content) => new(ChatRole.System, content);

    /// <summary>A <see cref="ChatRole.User"/> message.</summary>
    public static ChatMessage User(string content) => new(ChatRole.User, content);

    /// <summary>An <see cref="ChatRole.Assistant"/> message.</summary>
    public static ChatMessage Assistant(string content) => new(ChatRole.Assistant, content);

    /// <summary>A <see cref="ChatRole.Tool"/> message answering <paramref name="toolCallId"/>.</summary>
    public static ChatMessage Tool(string content, string? toolCallId = null) => new(ChatRole.Tool, content) { ToolCallId = toolCallId };
}

/// <summary>A function call made by the assistant.</summary>
/// <param name="Id">The call id (<c>tool_calls[i].id</c>).</param>
/// <param name="Name">The function's name.</param>
/// <param name="Arguments">The arguments as the JSON text OpenAI sends (<c>function.arguments</c>, a string).</param>
public sealed record ChatToolCall(string Id, string Name, string Arguments);

/// <summary>A tool the model may call, as the template renders it.</summary>
/// <param name="Name">The function's name.</param>
/// <param name="Json">The tool object as Python's <c>json.dumps(tool, indent=4, ensure_ascii=False)</c> writes it (the
/// template's <c>tojson(indent=4)</c> under Hugging Face's chat-template environment).</param>
public sealed record ChatTool(string Name, string Json);

/// <summary>
/// A conversation that cannot be rendered: no messages, an unknown role, missing content, an unsupported content part.
/// <see cref="Field"/> names the offending field in OpenAI request terms (for example <c>messages[2].role</c>), for a
/// 400 response.
/// </summary>
public sealed class ChatTemplateException : Exception
{
    /// <summary>Creates the exception for <paramref name="field"/>.</summary>
    public ChatTemplateException(string field, string message) : base($"{field}: {message}")
    {
        Field = field;
    }

    /// <summary>The offending field, such as <c>messages</c> or <c>messages[1].content[0].type</c>.</summary>
    public string Field { get; }
}

/// <summary>An image content part of a chat message (OpenAI <c>{"type": "image_url", "image_url": {"url": ...}}</c>).</summary>
/// <param name="Offset">Where in the message's text the image sits (UTF-16 offset into <see cref="ChatMessage.Content"/>).</param>
/// <param name="Url">A <c>data:image/...;base64,...</c> URL or an http(s) URL.</param>
/// <param name="Detail">OpenAI's <c>detail</c> (<c>auto</c>, <c>low</c> or <c>high</c>), accepted and ignored: Llama 4 tiles every image the same way.</param>
/// <param name="Field">The part's JSON path for error messages, e.g. <c>messages[0].content[1]</c>.</param>
public sealed record ChatImagePart(int Offset, string Url, string? Detail, string Field);
