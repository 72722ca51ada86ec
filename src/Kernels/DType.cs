namespace Distributed.Kernels;

/// <summary>Element types the kernels and the wire understand. Values are persisted (wire, manifests): never reuse one.</summary>
public enum DType : byte
{
    /// <summary>IEEE 754 binary32.</summary>
    F32 = 0,
    /// <summary>bfloat16: the upper 16 bits of a binary32.</summary>
    BF16 = 1,
    /// <summary>IEEE 754 binary16.</summary>
    F16 = 2,
    /// <summary>Signed 32-bit integer.</summary>
    I32 = 3,
    /// <summary>Signed 64-bit integer.</summary>
    I64 = 4,
    /// <summary>FP8 E4M3FN (safetensors <c>F8_E4M3</c>): see <see cref="Fp8E4M3"/>.</summary>
    F8E4M3 = 5,
}

/// <summary>Sizes and conversions for <see cref="DType"/>.</summary>
public static class DTypeInfo
{
    /// <summary>Bytes per element.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Unknown dtype.</exception>
    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.BF16 => 2,
        DType.F16 => 2,
        DType.I32 => 4,
        DType.I64 => 8,
        DType.F8E4M3 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    /// <summary>Widens one bf16 value (raw bits) to float exactly.</summary>
    public static float Bf16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Rounds a float to bf16 (round to nearest, ties to even; NaN stays a quiet NaN).</summary>
    public static ushort FloatToBf16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            return (ushort)((bits >> 16) | 0x0040u);
        }
        uint rounding = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + rounding) >> 16);
    }
}
