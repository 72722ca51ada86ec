using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// JSON text as Python's <c>json.dumps(value, ensure_ascii=False, indent=indent)</c> writes it: what the chat template's
/// <c>tojson</c> filter produces under Hugging Face's template environment. Separators <c>", "</c> and <c>": "</c>
/// without indent, <c>","</c> and <c>": "</c> with it; keys in their order; non-ASCII kept; <c>"</c>, <c>\</c> and control
/// characters escaped (<c>\n \r \t \b \f</c>, others <c>\u00XX</c>); integers as written; other numbers as Python's
/// <c>repr(float)</c> (exponent form below 1e-4 and from 1e16 on).
/// </summary>
public static class PythonJson
{
    /// <summary>Serializes <paramref name="value"/>.</summary>
    public static string Dumps(JsonElement value, int? indent = null)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, 0);
        return sb.ToString();
    }

    /// <summary>Serializes a string value (quotes and escapes).</summary>
    public static string Dumps(string value)
    {
        var sb = new StringBuilder(value.Length + 2);
        WriteString(sb, value);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, JsonElement value, int? indent, int depth)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Object:
            {
                var members = value.EnumerateObject().ToList();
                if (members.Count == 0)
                {
                    sb.Append("{}");
                    return;
                }
                sb.Append('{');
                for (int i = 0; i < members.Count; i++)
                {
                    Separator(sb, i, indent, depth + 1);
                    WriteString(sb, members[i].Name);
                    sb.Append(": ");
                    Write(sb, members[i].Value, indent, depth + 1);
                }
                Close(sb, '}', indent, depth);
                return;
            }
            case JsonValueKind.Array:
            {
                int n = value.GetArrayLength();
                if (n == 0)
                {
                    sb.Append("[]");
                    return;
                }
                sb.Append('[');
                int i = 0;
                foreach (var item in value.EnumerateArray())
                {
                    Separator(sb, i++, indent, depth + 1);
                    Write(sb, item, indent, depth + 1);
                }
                Close(sb, ']', indent, depth);
                return;
            }
            case JsonValueKind.String:
                WriteString(sb, value.GetString()!);
                return;
            case JsonValueKind.Number:
                sb.Append(Number(value.GetRawText()));
                return;
            case JsonValueKind.True:
                sb.Append("true");
                return;
            case JsonValueKind.False:
                sb.Append("false");
                return;
            default:
                sb.Append("null");
                return;
        }
    }

    private static void Separator(StringBuilder sb, int index, int? indent, int depth)
    {
        if (index > 0)
        {
            sb.Append(indent is null ? ", " : ",");
        }
        if (indent is int n)
        {
            sb.Append('\n').Append(' ', n * depth);
        }
    }

    private static void Close(StringBuilder sb, char bracket, int? indent, int depth)
    {
        if (indent is int n)
        {
            sb.Append('\n').Append(' ', n * depth);
        }
        sb.Append(bracket);
    }

    private static string Number(string raw)
    {
        if (raw.IndexOfAny(['.', 'e', 'E']) < 0)
        {
            return raw; // an integer literal: Python keeps ints exact whatever their size
        }
        if (!double.TryParse(raw, NumberStyles.Float, CultureInfo.InvariantCulture, out double d))
        {
            return raw;
        }
        if (double.IsInfinity(d))
        {
            return d > 0 ? "Infinity" : "-Infinity";
        }
        if (d == 0)
        {
            return raw.TrimStart().StartsWith('-') ? "-0.0" : "0.0";
        }
        // Shortest round-trip digits (the same digits Python's repr picks), then Python's layout of them.
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        bool negative = r.StartsWith('-');
        if (negative)
        {
            r = r[1..];
        }
        int e = r.IndexOf('E');
        int exponent = e >= 0 ? int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture) : 0;
        string mantissa = e >= 0 ? r[..e] : r;
        int dot = mantissa.IndexOf('.');
        string digits = mantissa.Replace(".", "", StringComparison.Ordinal);
        // Value = 0.digits × 10^point.
        int point = (dot >= 0 ? dot : mantissa.Length) + exponent;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0')
        {
            lead++;
        }
        point -= lead;
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0)
        {
            digits = "0";
        }
        int decimalExponent = point - 1;
        string sign = negative ? "-" : "";
        if (decimalExponent < -4 || decimalExponent >= 16)
        {
            string m = digits.Length == 1 ? digits : $"{digits[0]}.{digits[1..]}";
            return $"{sign}{m}e{(decimalExponent < 0 ? '-' : '+')}{Math.Abs(decimalExponent):00}";
        }
        if (point <= 0)
        {
            return $"{sign}0.{new string('0', -point)}{digits}";
        }
        if (point >= digits.Length)
        {
            return $"{sign}{digits}{new string('0', point - digits.Length)}.0";
        }
        return $"{sign}{digits[..point]}.{digits[point..]}";
    }

    private static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"':
                    sb.Append("\\\"");
                    break;
                case '\\':
                    sb.Append("\\\\");
                    break;
                case '\n':
                    sb.Append("\\n");
                    break;
                case '\r':
                    sb.Append("\\r");
                    break;
                case '\t':
                    sb.Append("\\t");
                    break;
                case '\b':
                    sb.Append("\\b");
                    break;
                case '\f':
                    sb.Append("\\f");
                    break;
                default:
                    if (c < 0x20)
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }
                    break;
            }
        }
        sb.Append('"');
    }
}
