namespace Distributed.Checkpoint;

/// <summary>Mapping between safetensors dtype strings and <see cref="DType"/>.</summary>
public static class SafetensorsDTypes
{
    /// <summary>The dtype strings of the safetensors format that no <see cref="DType"/> represents (rejected with a clear error).</summary>
    private static readonly HashSet<string> KnownButUnsupported = new(StringComparer.Ordinal)
    {
        "BOOL", "U8", "I8", "U16", "I16", "U32", "U64", "F64", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
        "C64",
    };

    /// <summary>Parses a safetensors dtype string (<c>BF16</c>, <c>F16</c>, <c>F32</c>, <c>I32</c>, <c>I64</c>, <c>F8_E4M3</c>; case-sensitive).</summary>
    /// <returns>False for any other string, including dtypes the format knows but this runtime does not support.</returns>
    public static bool TryParse(string text, out DType dtype)
    {
        DType? parsed = text switch
        {
            "BF16" => DType.BF16,
            "F16" => DType.F16,
            "F32" => DType.F32,
            "I32" => DType.I32,
            "I64" => DType.I64,
            "F8_E4M3" => DType.F8E4M3,
            _ => null,
        };
        dtype = parsed.GetValueOrDefault();
        return parsed.HasValue;
    }

    /// <summary>True for dtype strings the safetensors format defines but this runtime does not support (F8_E5M2, F64, ...).</summary>
    public static bool IsKnownUnsupported(string text) => KnownButUnsupported.Contains(text);

    /// <summary>The safetensors dtype string of <paramref name="dtype"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a defined <see cref="DType"/>.</exception>
    public static string ToText(DType dtype) => dtype switch
    {
        DType.BF16 => "BF16",
        DType.F16 => "F16",
        DType.F32 => "F32",
        DType.I32 => "I32",
        DType.I64 => "I64",
        DType.F8E4M3 => "F8_E4M3",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };
}
