using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>
/// Typed, validated access to the fields of one JSON object; every error is a <see cref="CheckpointException"/>
/// of the form <c>"{source}: field '{path}{name}' must be ..."</c>. Duplicate keys are rejected (Python's json
/// silently keeps the last one, which hides mistakes).
/// </summary>
internal sealed class JsonFields
{
    private readonly Dictionary<string, JsonElement> _fields;
    private readonly string _source;
    private readonly string _path;

    private JsonFields(Dictionary<string, JsonElement> fields, string source, string path)
    {
        _fields = fields;
        _source = source;
        _path = path;
    }

    /// <summary>Parses <paramref name="text"/> (at most <paramref name="maxDepth"/> levels deep).</summary>
    /// <exception cref="CheckpointException">Not well-formed JSON, naming <paramref name="source"/>.</exception>
    public static JsonDocument ParseDocument(string text, string source, int maxDepth)
    {
        try
        {
            return JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = maxDepth });
        }
        catch (JsonException ex)
        {
            throw new CheckpointException($"{source}: not well-formed JSON: {ex.Message}", ex);
        }
    }

    /// <summary>Wraps <paramref name="obj"/>; <paramref name="path"/> prefixes field names in messages (<c>"text_config."</c>).</summary>
    public static JsonFields Of(JsonElement obj, string source, string path, string what)
    {
        if (obj.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointException($"{source}: {what} must be a JSON object, got {Describe(obj)}");
        }
        var fields = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var p in obj.EnumerateObject())
        {
            if (!fields.TryAdd(p.Name, p.Value))
            {
                throw new CheckpointException($"{source}: field '{path}{p.Name}' appears twice");
            }
        }
        return new JsonFields(fields, source, path);
    }

    public string Source => _source;

    public string Name(string field) => _path + field;

    /// <summary>Present, possibly as JSON null.</summary>
    public bool IsPresent(string field) => _fields.ContainsKey(field);

    /// <summary>Present and not JSON null.</summary>
    public bool Has(string field) => _fields.TryGetValue(field, out var v) && v.ValueKind != JsonValueKind.Null;

    public bool TryGet(string field, out JsonElement value)
    {
        if (_fields.TryGetValue(field, out value) && value.ValueKind != JsonValueKind.Null)
        {
            return true;
        }
        value = default;
        return false;
    }

    public CheckpointException Error(string field, string mustBe, JsonElement? got = null)
    {
        string suffix = got is { } g ? $", got {Describe(g)}" : "";
        return new CheckpointException($"{_source}: field '{Name(field)}' must be {mustBe}{suffix}");
    }

    public CheckpointException Missing(string field, string what) =>
        new($"{_source}: required field '{Name(field)}' is missing ({what})");

    public int RequiredPositiveInt(string field)
    {
        if (!TryGet(field, out var v))
        {
            throw Missing(field, "a positive integer");
        }
        return PositiveInt(field, v);
    }

    public int OptionalPositiveInt(string field, int defaultValue) => TryGet(field, out var v) ? PositiveInt(field, v) : defaultValue;

    public int? OptionalPositiveIntOrNull(string field) => TryGet(field, out var v) ? PositiveInt(field, v) : null;

    public int OptionalNonNegativeInt(string field, int defaultValue)
    {
        if (!TryGet(field, out var v))
        {
            return defaultValue;
        }
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x) || x < 0)
        {
            throw Error(field, "a non-negative integer", v);
        }
        return x;
    }

    public int PositiveInt(string field, JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x) || x <= 0)
        {
            throw Error(field, "a positive integer", v);
        }
        return x;
    }

    public double OptionalPositiveNumber(string field, double defaultValue)
    {
        if (!TryGet(field, out var v))
        {
            return defaultValue;
        }
        return PositiveNumber(field, v);
    }

    public double PositiveNumber(string field, JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !double.IsFinite(x) || x <= 0)
        {
            throw Error(field, "a positive number", v);
        }
        return x;
    }

    public double OptionalFiniteNumber(string field, double defaultValue)
    {
        if (!TryGet(field, out var v))
        {
            return defaultValue;
        }
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !double.IsFinite(x))
        {
            throw Error(field, "a finite number", v);
        }
        return x;
    }

    public bool OptionalBool(string field, bool defaultValue)
    {
        if (!TryGet(field, out var v))
        {
            return defaultValue;
        }
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(field, "true or false", v),
        };
    }

    public string? OptionalString(string field)
    {
        if (!TryGet(field, out var v))
        {
            return null;
        }
        if (v.ValueKind != JsonValueKind.String)
        {
            throw Error(field, "a string", v);
        }
        return v.GetString();
    }

    /// <summary>An integer array, or null when absent or JSON null.</summary>
    public int[]? OptionalIntArray(string field, int minValue)
    {
        if (!TryGet(field, out var v))
        {
            return null;
        }
        if (v.ValueKind != JsonValueKind.Array)
        {
            throw Error(field, "an array of integers", v);
        }
        var result = new int[v.GetArrayLength()];
        int i = 0;
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int x) || x < minValue)
            {
                throw new CheckpointException(
                    $"{_source}: field '{Name(field)}[{i}]' must be an integer >= {minValue}, got {Describe(item)}");
            }
            result[i++] = x;
        }
        return result;
    }

    /// <summary>A short description of a JSON value for error messages (kind plus a clipped literal).</summary>
    public static string Describe(JsonElement v)
    {
        string raw = v.GetRawText();
        if (raw.Length > 40)
        {
            raw = raw[..37] + "...";
        }
        string kind = v.ValueKind switch
        {
            JsonValueKind.Object => "object",
            JsonValueKind.Array => "array",
            JsonValueKind.String => "string",
            JsonValueKind.Number => "number",
            JsonValueKind.True or JsonValueKind.False => "boolean",
            JsonValueKind.Null => "null",
            _ => "value",
        };
        return $"{kind} {raw}";
    }
}
