namespace Distributed.Kernels;

/// <summary>
/// Inverse frequencies of Llama 4's interleaved (complex-pair) rotary embedding: pair <c>(x[2i], x[2i+1])</c>
/// rotates by angle <c>fl32(position · InvFreq[i])</c>, as Hugging Face computes it in float32
/// (modeling_llama4.py <c>Llama4TextRotaryEmbedding</c>, <c>apply_rotary_emb</c>).
/// </summary>
public sealed class RopeTable
{
    /// <summary>Creates a table from precomputed float32 inverse frequencies (length <c>headDim / 2</c>).</summary>
    public RopeTable(float[] invFreq)
    {
        ArgumentNullException.ThrowIfNull(invFreq);
        if (invFreq.Length == 0)
        {
            throw new ArgumentException("rope table needs at least one frequency", nameof(invFreq));
        }
        InvFreq = invFreq;
    }

    /// <summary>Float32 inverse frequency per rotated pair.</summary>
    public float[] InvFreq { get; }

    /// <summary>Head width this table rotates (<c>2 · InvFreq.Length</c>).</summary>
    public int HeadDim => InvFreq.Length * 2;

    /// <summary>
    /// Llama 3 / Llama 4 inverse frequencies: <c>1 / theta^(2i/d)</c> in float32, then, when <paramref name="scaling"/>
    /// is given, the <c>llama3</c> rope-type rescale (HF modeling_rope_utils <c>_compute_llama3_parameters</c>),
    /// which must not produce NaN when <c>low_freq_factor == high_freq_factor</c> (the medium band is empty).
    /// </summary>
    public static RopeTable Create(int headDim, double theta, Llama3RopeScaling? scaling)
    {
        if (headDim <= 0 || headDim % 2 != 0)
        {
            throw new ArgumentException($"head_dim must be positive and even, got {headDim}", nameof(headDim));
        }
        int half = headDim / 2;
        var inv = new float[half];
        for (int i = 0; i < half; i++)
        {
            // HF: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=int64).float() / dim)) — float32 exponent, float32 pow.
            float exponent = (float)(2 * i) / headDim;
            float denom = (float)Math.Pow(theta, exponent);
            inv[i] = 1.0f / denom;
        }
        if (scaling is { } s)
        {
            double lowFreqWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
            double highFreqWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
            for (int i = 0; i < half; i++)
            {
                float f = inv[i];
                float wavelen = (float)(2 * Math.PI / f); // HF: float32 tensor
                float scaled;
                if (wavelen > lowFreqWavelen)
                {
                    scaled = f / (float)s.Factor;
                }
                else if (wavelen < highFreqWavelen)
                {
                    scaled = f;
                }
                else
                {
                    // medium band; unreachable when low == high factor (empty band), so no 0/0 here.
                    double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    scaled = (float)((1 - smooth) * f / s.Factor + smooth * f);
                }
                inv[i] = scaled;
            }
        }
        return new RopeTable(inv);
    }
}

/// <summary>HF <c>rope_scaling</c> with <c>rope_type: llama3</c>.</summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositionEmbeddings);
