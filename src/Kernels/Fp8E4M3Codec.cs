namespace Distributed.Kernels;

/// <summary>
/// The E4M3FN encoding itself (value table, round-to-nearest-even encoder, per-row quantizer), with no dependency: this
/// one file is compiled into Distributed.Kernels (behind the public <c>Fp8E4M3</c>) and into Distributed.Protocol
/// (the <c>--wire fp8</c> row codec), so weights, activations and wire rows round identically without either assembly
/// referencing the other.
/// </summary>
internal static class Fp8E4M3Codec
{
    public const float MaxValue = 448f;

    public const float MinRowScale = 1f / (448f * 512f);

    public const byte NaNCode = 0x7F;

    /// <summary>Bytes of a quantized row's scale (little-endian fp32) ahead of its codes, on the wire and on the device.</summary>
    public const int RowScaleBytes = 4;

    /// <summary>The value of every code (index = code); NaN for <c>0x7F</c> and <c>0xFF</c>.</summary>
    public static readonly float[] Values = BuildValues();

    /// <summary>Round to nearest E4M3, ties to even; saturates at ±448; NaN gives <see cref="NaNCode"/>; −0.0 gives 0x80.</summary>
    public static byte FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        byte sign = (byte)((bits >> 24) & 0x80);
        if (float.IsNaN(value))
        {
            return NaNCode;
        }
        float a = MathF.Abs(value);
        if (a < 0.015625f)
        {
            // Subnormal range (below 2^-6): multiples of 2^-9; a · 512 is exact, and 8 · 2^-9 = 2^-6 is code 0x08.
            return (byte)(sign | (int)MathF.Round(a * 512f, MidpointRounding.ToEven));
        }
        if (a >= MaxValue)
        {
            return (byte)(sign | 0x7E);
        }
        // Round the fp32 mantissa to 3 bits, ties to even; a carry moves into the exponent as it should.
        uint ab = bits & 0x7FFF_FFFFu;
        uint rounded = (ab + 0x7FFFFu + ((ab >> 20) & 1u)) >> 20;
        // fp32 exponent bias 127 → E4M3 bias 7: subtract 120 << 3 from (exponent << 3 | mantissa).
        uint code = rounded - (120u << 3);
        return (byte)(sign | (code > 0x7E ? 0x7Eu : code));
    }

    /// <summary><c>max(max|x| / 448, 1/(448·512))</c> in float32 (NaN when x holds NaN).</summary>
    public static float RowScale(ReadOnlySpan<float> x)
    {
        float amax = 0f;
        foreach (float v in x)
        {
            amax = MathF.Max(amax, MathF.Abs(v));
        }
        return MathF.Max(amax / MaxValue, MinRowScale);
    }

    /// <summary>Per-row quantization: returns s = <see cref="RowScale"/>, <c>codes[i] = e4m3_rne(clamp(x[i] / s, −448, 448))</c>.</summary>
    public static float QuantizeRow(ReadOnlySpan<float> x, Span<byte> codes)
    {
        float s = RowScale(x);
        for (int i = 0; i < x.Length; i++)
        {
            codes[i] = FromFloat(Math.Clamp(x[i] / s, -MaxValue, MaxValue));
        }
        return s;
    }

    private static float[] BuildValues()
    {
        var v = new float[256];
        for (int c = 0; c < 256; c++)
        {
            int e = (c >> 3) & 0xF;
            int m = c & 7;
            float magnitude = (c & 0x7F) == 0x7F ? float.NaN
                : e == 0 ? m / 8f * (1f / 64f)
                : MathF.ScaleB(1f + (m / 8f), e - 7);
            v[c] = (c & 0x80) != 0 ? -magnitude : magnitude;
        }
        return v;
    }
}
