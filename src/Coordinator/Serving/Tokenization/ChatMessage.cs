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

    /// <summary>A <see cref="ChatRole.System"/> message.</summary>
    public static ChatMessage System(string content) => new(ChatRole.System, content);

    /// <summary>A <see cref="ChatRole.User"/> message.</summary>
    public static ChatMessage User(string content) => new(ChatRole.User, content);

    /// <summary>An <see cref="ChatRole.Assistant"/> message.</summary>
    public static ChatMessage Assistant(string content) => new(ChatRole.Assistant, content);

    /// <summary>A <see cref="ChatRole.Tool"/> message answering <paramref name="toolCallId"/>.</summary>
    public static ChatMessage Tool(string content, string? toolCallId = null) => new(ChatRole.Tool, content) { ToolCallId = toolCallId };

    /// <inheritdoc />
    public bool Equals(ChatMessage? other) =>
        other is not null && Role == other.Role && Content == other.Content && ToolCallId == other.ToolCallId
        && (ToolCalls ?? []).SequenceEqual(other.ToolCalls ?? []);

    /// <inheritdoc />
    public override int GetHashCode() => HashCode.Combine(Role, Content, ToolCallId, ToolCalls?.Count ?? 0);
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
