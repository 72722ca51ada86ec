namespace Distributed.Kernels.Cpu;

/// <summary>Interleaved (complex-pair) rotary embedding of Llama 4 (text: one position per row; vision: given angles).</summary>
internal static unsafe class RopeKernel
{
    /// <summary>
    /// Rotates every head of one row: pair i of a head by <c>θ = fl32(position · invFreq[i])</c>. cos/sin are computed
    /// in double from the fp32 angle and rounded to fp32 (as torch.polar in fp32 does, to within its rounding); the
    /// complex product is formed in double and rounded once.
    /// </summary>
    /// <param name="cosSin">Scratch of <c>2 · invFreq.Length</c> floats.</param>
    public static void Row(float* x, int heads, int position, float[] invFreq, float* cosSin)
    {
        int half = invFreq.Length;
        float pos = position;
        for (int i = 0; i < half; i++)
        {
            float theta = pos * invFreq[i];
            cosSin[2 * i] = (float)Math.Cos(theta);
            cosSin[(2 * i) + 1] = (float)Math.Sin(theta);
        }
        RotateRow(x, heads, half, cosSin);
    }

    /// <summary>
    /// Rotates pair i of every head of one row by the angle whose cosine and sine are <c>cosSin[2i]</c>,
    /// <c>cosSin[2i + 1]</c>; the complex product is formed in double and rounded once.
    /// </summary>
    public static void RotateRow(float* x, int heads, int pairs, float* cosSin)
    {
        int headDim = 2 * pairs;
        for (int h = 0; h < heads; h++)
        {
            float* v = x + ((long)h * headDim);
            for (int i = 0; i < pairs; i++)
            {
                double c = cosSin[2 * i];
                double s = cosSin[(2 * i) + 1];
                double x0 = v[2 * i];
                double x1 = v[(2 * i) + 1];
                v[2 * i] = (float)((x0 * c) - (x1 * s));
                v[(2 * i) + 1] = (float)((x0 * s) + (x1 * c));
            }
        }
    }
}
