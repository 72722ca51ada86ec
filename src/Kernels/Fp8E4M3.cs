namespace Distributed.Kernels;

/// <summary>
/// The FP8 E4M3FN format (OCP FP8, PyTorch <c>float8_e4m3fn</c>, safetensors <c>F8_E4M3</c>) and the two quantization
/// rules this runtime uses, bit for bit as the compressed-tensors FP8 release of Llama 4 and vLLM compute them
/// (<c>tests/fixtures/tiny-maverick-fp8/README.md</c> pins them; <c>fp8_codec_cases.safetensors</c> tests them).
/// <para>Code layout: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits. Exponent 0 is subnormal:
/// <c>m/8 · 2^-6</c>. <c>0x7F</c> and <c>0xFF</c> are NaN; there are no infinities; the largest value is 448.</para>
/// </summary>
public static class Fp8E4M3
{
    /// <summary>Largest finite magnitude (code <c>0x7E</c>).</summary>
    public const float MaxValue = Fp8E4M3Codec.MaxValue;

    /// <summary>
    /// Smallest per-token activation scale, <c>1 / (448 · 512)</c>: vLLM's <c>scaled_fp8_quant</c> clamps
    /// <c>amax / 448</c> from below so that an all-zero (or nearly zero) row never divides by zero.
    /// </summary>
    public const float MinActivationScale = Fp8E4M3Codec.MinRowScale;

    /// <summary>
    /// Smallest per-channel weight scale, <c>float32 eps = 2^-23</c> (compressed-tensors clamps the scale from below;
    /// an all-zero row gets this scale).
    /// </summary>
    public const float MinWeightScale = 1.1920929E-07f;

    /// <summary>The quiet NaN code this encoder writes for NaN input.</summary>
    public const byte NaNCode = Fp8E4M3Codec.NaNCode;

    private static readonly float[] Values = Fp8E4M3Codec.Values;

    /// <summary>The value of every code (index = code); NaN for <c>0x7F</c> and <c>0xFF</c>.</summary>
    public static ReadOnlySpan<float> ValueTable => Values;

    /// <summary>The exact value of <paramref name="code"/> (NaN for <c>0x7F</c>/<c>0xFF</c>).</summary>
    public static float ToFloat(byte code) => Values[code];

    /// <summary>
    /// The bf16 bits of <paramref name="code"/>'s value. Exact: every E4M3 value (subnormals included) is a bf16 value,
    /// so an E4M3 weight widened this way multiplies exactly like the float it stands for.
    /// </summary>
    public static ushort ToBf16Bits(byte code) => (ushort)(BitConverter.SingleToUInt32Bits(Values[code]) >> 16);

    /// <summary>True for the two NaN codes.</summary>
    public static bool IsNaN(byte code) => (code & 0x7F) == 0x7F;

    /// <summary>Index of the first NaN code (<c>0x7F</c> or <c>0xFF</c>) in <paramref name="codes"/>, or -1.</summary>
    public static int IndexOfNaN(ReadOnlySpan<byte> codes)
    {
        return codes.IndexOfAny((byte)0x7F, (byte)0xFF);
    }

    /// <summary>
    /// Rounds <paramref name="value"/> to the nearest E4M3 value, ties to even (PyTorch's <c>float → float8_e4m3fn</c>
    /// cast). Magnitudes above 448 saturate to ±448 (the quantizers clamp first, so they never get there); NaN gives
    /// <see cref="NaNCode"/>; −0.0 gives <c>0x80</c>.
    /// </summary>
    public static byte FromFloat(float value) => Fp8E4M3Codec.FromFloat(value);

    /// <summary>
    /// Per-token activation quantization (vLLM <c>scaled_fp8_quant</c>, dynamic per-token, the release's
    /// <c>input_activations</c> group): <c>s = max(max|x| / 448, 1/(448·512))</c> in float32,
    /// <c>codes[i] = e4m3_rne(clamp(x[i] / s, −448, 448))</c> (a float32 division). Returns s; the row stands for
    /// <c>ToFloat(codes[i]) · s</c>.
    /// </summary>
    /// <param name="x">One row; must be finite.</param>
    /// <param name="codes">Same length as <paramref name="x"/>.</param>
    /// <exception cref="ArgumentException">Lengths differ.</exception>
    public static float QuantizeRow(ReadOnlySpan<float> x, Span<byte> codes)
    {
        if (codes.Length != x.Length)
        {
            throw new ArgumentException($"codes has {codes.Length} entries, x has {x.Length}", nameof(codes));
        }
        return Fp8E4M3Codec.QuantizeRow(x, codes);
    }

    /// <summary>
    /// <see cref="QuantizeRow"/> returning the code VALUES (not scaled by s) as floats, the operand the W8A8 kernels
    /// multiply: <c>q[i] = ToFloat(e4m3_rne(clamp(x[i] / s, −448, 448)))</c>. Returns s.
    /// </summary>
    public static float QuantizeRowToValues(ReadOnlySpan<float> x, Span<float> q)
    {
        if (q.Length != x.Length)
        {
            throw new ArgumentException($"q has {q.Length} entries, x has {x.Length}", nameof(q));
        }
        float s = RowScale(x);
        for (int i = 0; i < x.Length; i++)
        {
            q[i] = Values[FromFloat(Math.Clamp(x[i] / s, -MaxValue, MaxValue))];
        }
        return s;
    }

    /// <summary><c>max(max|x| / 448, 1/(448·512))</c> in float32 (NaN when x holds NaN).</summary>
    public static float RowScale(ReadOnlySpan<float> x) => Fp8E4M3Codec.RowScale(x);

    /// <summary>
    /// Per-output-channel weight quantization (compressed-tensors' FP8 recipe for a BF16 model, the rule the FP8
    /// release and <c>tiny-maverick-fp8</c> were made with): for one output row w (bf16 bits),
    /// <c>scale = max(bf16(max|w| / 448), 2^-23)</c>, <c>codes[i] = e4m3_rne(clamp(bf16(w[i] / scale), −448, 448))</c>
    /// (each division in float32, then rounded to bf16 as a bf16 tensor op does). Returns the scale's bf16 bits.
    /// </summary>
    /// <param name="row">One output channel's weights (raw bf16 bits); must be finite.</param>
    /// <param name="codes">Same length as <paramref name="row"/>.</param>
    /// <exception cref="ArgumentException">Lengths differ.</exception>
    public static ushort QuantizeWeightRow(ReadOnlySpan<ushort> row, Span<byte> codes)
    {
        if (codes.Length != row.Length)
        {
            throw new ArgumentException($"codes has {codes.Length} entries, row has {row.Length}", nameof(codes));
        }
        float amax = 0f;
        foreach (ushort b in row)
        {
            amax = MathF.Max(amax, MathF.Abs(DTypeInfo.Bf16ToFloat(b)));
        }
        float scale = MathF.Max(DTypeInfo.Bf16ToFloat(DTypeInfo.FloatToBf16(amax / MaxValue)), MinWeightScale);
        for (int i = 0; i < row.Length; i++)
        {
            float q = DTypeInfo.Bf16ToFloat(DTypeInfo.FloatToBf16(DTypeInfo.Bf16ToFloat(row[i]) / scale));
            codes[i] = FromFloat(Math.Clamp(q, -MaxValue, MaxValue));
        }
        return DTypeInfo.FloatToBf16(scale);
    }

    /// <summary>The checks of <see cref="IKernelBackend.CreateFp8Weight"/>, shared by every backend.</summary>
    /// <exception cref="ArgumentException">The first problem found, naming the parameter and index.</exception>
    public static void CheckWeight(ReadOnlySpan<byte> e4m3, ReadOnlySpan<float> scales, int inFeatures, int outFeatures, WeightLayout layout,
        Fp8ActivationMode activations)
    {
        const string Op = "CreateFp8Weight";
        if (inFeatures <= 0 || outFeatures <= 0)
        {
            throw new ArgumentException($"{Op}: weight shape must be positive, got [{inFeatures}, {outFeatures}]", nameof(inFeatures));
        }
        if (layout is not (WeightLayout.OutIn or WeightLayout.InOut))
        {
            throw new ArgumentException($"{Op}: unknown weight layout {layout}", nameof(layout));
        }
        if (!Enum.IsDefined(activations))
        {
            throw new ArgumentException($"{Op}: unknown FP8 activation mode {(int)activations}", nameof(activations));
        }
        long elements = (long)inFeatures * outFeatures;
        if (e4m3.Length != elements)
        {
            throw new ArgumentException($"{Op}: e4m3 has {e4m3.Length} codes, expected {inFeatures} × {outFeatures} = {elements}", nameof(e4m3));
        }
        if (scales.Length != outFeatures)
        {
            throw new ArgumentException($"{Op}: scales has {scales.Length} entries, expected one per output feature ({outFeatures})", nameof(scales));
        }
        for (int i = 0; i < scales.Length; i++)
        {
            if (!(scales[i] > 0f) || !float.IsFinite(scales[i]))
            {
                throw new ArgumentException($"{Op}: scales[{i}] = {scales[i]} is not finite and positive", nameof(scales));
            }
        }
        int nan = IndexOfNaN(e4m3);
        if (nan >= 0)
        {
            throw new ArgumentException($"{Op}: e4m3[{nan}] is the NaN code 0x{e4m3[nan]:X2}", nameof(e4m3));
        }
    }
}
