using System.Text;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>A function call the model made, as the API returns it.</summary>
/// <param name="Id">Call id (<c>chatcmpl-tool-</c> + 32 hex digits).</param>
/// <param name="Name">The function's name.</param>
/// <param name="Arguments">The arguments object as JSON text (OpenAI's <c>function.arguments</c> string).</param>
public sealed record ToolCallResult(string Id, string Name, string Arguments);

/// <summary>
/// Reads tool calls out of a Llama 4 answer in the format its chat template asks for: one or more JSON objects
/// <c>{"name": function name, "parameters": {...}}</c> (<c>"arguments"</c> also accepted, as an object or as JSON text),
/// back to back or separated by whitespace, <c>;</c> or <c>,</c>, or a JSON array of them — optionally wrapped in
/// <c>&lt;|python_start|&gt;</c> … <c>&lt;|python_end|&gt;</c>, whose text the decoder has already dropped. The whole
/// answer must be calls; anything else is ordinary content.
/// </summary>
public static class ToolCallParser
{
    /// <summary>Whether <paramref name="text"/> could still become a tool call (its first non-space character opens JSON).</summary>
    public static bool MayBeToolCall(string text)
    {
        foreach (char c in text)
        {
            if (!char.IsWhiteSpace(c))
            {
                return c is '{' or '[';
            }
        }
        return true;
    }

    /// <summary>Parses the calls of a finished answer; false when it is not (only) tool calls.</summary>
    /// <param name="text">The answer's text.</param>
    /// <param name="knownTools">The request's tool names: a call of another name means the text is not a call.</param>
    /// <param name="calls">The calls, in order.</param>
    public static bool TryParse(string text, IReadOnlyCollection<string> knownTools, out List<ToolCallResult> calls)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(knownTools);
        calls = [];
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        int pos = 0;
        try
        {
            while (true)
            {
                while (pos < bytes.Length && (bytes[pos] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t' or (byte)';' || (calls.Count > 0 && bytes[pos] == (byte)',')))
                {
                    pos++;
                }
                if (pos == bytes.Length)
                {
                    break;
                }
                var reader = new Utf8JsonReader(bytes.AsSpan(pos), new JsonReaderOptions { AllowMultipleValues = true, MaxDepth = 64 });
                using var document = JsonDocument.ParseValue(ref reader);
                pos += (int)reader.BytesConsumed;
                var root = document.RootElement;
                if (root.ValueKind == JsonValueKind.Array)
                {
                    foreach (var item in root.EnumerateArray())
                    {
                        if (!TryCall(item, knownTools, calls))
                        {
                            return false;
                        }
                    }
                }
                else if (!TryCall(root, knownTools, calls))
                {
                    return false;
                }
            }
        }
        catch (JsonException)
        {
            calls.Clear();
            return false;
        }
        return calls.Count > 0;
    }

    private static bool TryCall(JsonElement e, IReadOnlyCollection<string> knownTools, List<ToolCallResult> calls)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String
            || !knownTools.Contains(name.GetString()!))
        {
            return false;
        }
        string arguments;
        if (e.TryGetProperty("parameters", out var p) || e.TryGetProperty("arguments", out p))
        {
            if (p.ValueKind == JsonValueKind.Object)
            {
                arguments = p.GetRawText();
            }
            else if (p.ValueKind == JsonValueKind.String && IsJsonObject(p.GetString()!))
            {
                arguments = p.GetString()!;
            }
            else
            {
                return false;
            }
        }
        else
        {
            arguments = "{}";
        }
        calls.Add(new ToolCallResult($"chatcmpl-tool-{Guid.NewGuid():N}", name.GetString()!, arguments));
        return true;
    }

    private static bool IsJsonObject(string s)
    {
        try
        {
            using var d = JsonDocument.Parse(s);
            return d.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
