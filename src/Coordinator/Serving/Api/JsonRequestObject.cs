using System.Globalization;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// Strict reader of one JSON request object: duplicate keys are refused, a JSON <c>null</c> counts as absent, every
/// typed getter checks the JSON kind and range and names the field in its error, and <see cref="RejectUnread"/> refuses
/// every field no getter asked for (OpenAI's "Unrecognized request argument").
/// </summary>
internal sealed class JsonRequestObject
{
    private readonly Dictionary<string, JsonElement> _fields = new(StringComparer.Ordinal);
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);
    private readonly string _path;

    /// <summary>Reads the members of <paramref name="element"/>; <paramref name="path"/> prefixes field names in errors ("" at the top level).</summary>
    /// <exception cref="ApiErrorException">Not an object, or a key occurs twice.</exception>
    public JsonRequestObject(JsonElement element, string path = "")
    {
        _path = path;
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw ApiErrorException.BadRequest(
                path.Length == 0 ? $"The request body must be a JSON object, got {Describe(element)}." : $"'{path}' must be an object, got {Describe(element)}.",
                path.Length == 0 ? null : path);
        }
        foreach (var property in element.EnumerateObject())
        {
            if (!_fields.TryAdd(property.Name, property.Value))
            {
                throw ApiErrorException.BadRequest($"Duplicate field '{Name(property.Name)}' in the request.", Name(property.Name));
            }
        }
    }

    /// <summary>The field's value when present and not null.</summary>
    public bool TryGet(string name, out JsonElement value)
    {
        _read.Add(name);
        if (_fields.TryGetValue(name, out value) && value.ValueKind != JsonValueKind.Null)
        {
            return true;
        }
        value = default;
        return false;
    }

    /// <summary>True when the field is present and not null (marks it read).</summary>
    public bool Has(string name) => TryGet(name, out _);

    /// <summary>A required non-empty string.</summary>
    public string RequiredString(string name)
    {
        if (!TryGet(name, out var value))
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' is required.", Name(name));
        }
        if (value.ValueKind != JsonValueKind.String)
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be a string, got {Describe(value)}.", Name(name));
        }
        string s = value.GetString()!;
        if (s.Length == 0)
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must not be empty.", Name(name));
        }
        return s;
    }

    /// <summary>An optional string (any length).</summary>
    public string? OptionalString(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }
        if (value.ValueKind != JsonValueKind.String)
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be a string, got {Describe(value)}.", Name(name));
        }
        return value.GetString();
    }

    /// <summary>An optional finite number in [<paramref name="min"/>, <paramref name="max"/>] (the lower end excluded when <paramref name="minExclusive"/>).</summary>
    public double? Number(string name, double min, double max, bool minExclusive = false)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }
        string range = $"{(minExclusive ? "greater than" : "between")} {Format(min)} {(minExclusive ? "and at most" : "and")} {Format(max)}";
        if (value.ValueKind != JsonValueKind.Number)
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be a number {range}, got {Describe(value)}.", Name(name));
        }
        if (!value.TryGetDouble(out double d) || !double.IsFinite(d) || d > max || d < min || (minExclusive && d <= min))
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be a number {range}, got {value.GetRawText()}.", Name(name));
        }
        return d;
    }

    /// <summary>An optional integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public long? Integer(string name, long min, long max)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out long v))
        {
            string got = value.ValueKind == JsonValueKind.Number ? value.GetRawText() : Describe(value);
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be an integer between {min} and {max}, got {got}.", Name(name));
        }
        if (v < min || v > max)
        {
            throw ApiErrorException.BadRequest($"'{Name(name)}' must be an integer between {min} and {max}, got {v}.", Name(name));
        }
        return v;
    }

    /// <summary>An optional boolean.</summary>
    public bool? Boolean(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiErrorException.BadRequest($"'{Name(name)}' must be a boolean, got {Describe(value)}.", Name(name)),
        };
    }

    /// <summary>Refuses the first field that no getter read.</summary>
    /// <exception cref="ApiErrorException">400 naming the field.</exception>
    public void RejectUnread()
    {
        foreach (string name in _fields.Keys)
        {
            if (!_read.Contains(name))
            {
                throw ApiErrorException.BadRequest($"Unrecognized request argument supplied: '{Name(name)}'.", Name(name), "unrecognized_argument");
            }
        }
    }

    /// <summary>The field's full path for messages.</summary>
    public string Name(string field) => _path.Length == 0 ? field : $"{_path}.{field}";

    /// <summary>"a string", "an array", ... for error messages.</summary>
    public static string Describe(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => "nothing",
    };

    private static string Format(double d) => d.ToString(CultureInfo.InvariantCulture);
}
