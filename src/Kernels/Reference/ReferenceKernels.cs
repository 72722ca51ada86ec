namespace Distributed.Kernels.Reference;

/// <summary>
/// Scalar double-precision implementations of every <see cref="IKernelBackend"/> op, for parity tests and GPU checks
/// only (slow). Each op computes in double from the fp32/bf16 inputs and rounds to float once, at its end, so results
/// are (nearly) correctly rounded and independent of summation order. Shapes are not validated beyond what indexing
/// checks; pass the shapes the backend contract describes.
/// </summary>
public static class ReferenceKernels
{
    /// <summary>Element <c>W[k, n]</c> of a bf16 matrix in <paramref name="layout"/>, widened exactly.</summary>
    public static double WeightAt(ReadOnlySpan<ushort> w, int inFeatures, int outFeatures, WeightLayout layout, int k, int n) =>
        DTypeInfo.Bf16ToFloat(layout == WeightLayout.InOut ? w[(k * outFeatures) + n] : w[(n * inFeatures) + k]);

    /// <summary><c>y[rows, N] = x[rows, K] · W[K, N]</c>.</summary>
    public static void MatMul(ReadOnlySpan<float> x, int rows, ReadOnlySpan<ushort> w, int inFeatures, int outFeatures,
        WeightLayout layout, Span<float> y)
    {
        var row = new double[outFeatures];
        for (int r = 0; r < rows; r++)
        {
            MatMulRow(x.Slice(r * inFeatures, inFeatures), w, inFeatures, outFeatures, layout, row);
            for (int n = 0; n < outFeatures; n++)
            {
                y[(r * outFeatures) + n] = (float)row[n];
            }
        }
    }

    /// <summary>Σ |x[k]·W[k, n]| per output: the scale of a matmul's rounding error (test tolerances).</summary>
    public static void MatMulAbs(ReadOnlySpan<float> x, int rows, ReadOnlySpan<ushort> w, int inFeatures, int outFeatures,
        WeightLayout layout, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
        {
            for (int n = 0; n < outFeatures; n++)
            {
                double s = 0;
                for (int k = 0; k < inFeatures; k++)
                {
                    s += Math.Abs(x[(r * inFeatures) + k] * WeightAt(w, inFeatures, outFeatures, layout, k, n));
                }
                y[(r * outFeatures) + n] = s;
            }
        }
    }

    private static void MatMulRow(ReadOnlySpan<float> x, ReadOnlySpan<ushort> w, int inFeatures, int outFeatures,
        WeightLayout layout, Span<double> y)
    {
        y.Clear();
        for (int k = 0; k < inFeatures; k++)
        {
            double xv = x[k];
            for (int n = 0; n < outFeatures; n++)
            {
                y[n] += xv * WeightAt(w, inFeatures, outFeatures, layout, k, n);
            }
        }
    }

    /// <summary>
    /// SwiGLU FFN <c>y = (silu(x·Wg) ⊙ (x·Wu)) · Wd</c>; <paramref name="gateUp"/> is <c>[H, 2I]</c> (gate first),
    /// <paramref name="down"/> is <c>[I, H]</c>, each in its own layout. The intermediate stays in double.
    /// </summary>
    public static void SwiGluFfn(ReadOnlySpan<float> x, int rows, ReadOnlySpan<ushort> gateUp, WeightLayout gateUpLayout,
        ReadOnlySpan<ushort> down, WeightLayout downLayout, int hidden, int intermediate, Span<float> y)
    {
        var h = new double[2 * intermediate];
        var act = new double[intermediate];
        for (int r = 0; r < rows; r++)
        {
            MatMulRow(x.Slice(r * hidden, hidden), gateUp, hidden, 2 * intermediate, gateUpLayout, h);
            for (int i = 0; i < intermediate; i++)
            {
                act[i] = Silu(h[i]) * h[intermediate + i];
            }
            for (int n = 0; n < hidden; n++)
            {
                double s = 0;
                for (int i = 0; i < intermediate; i++)
                {
                    s += act[i] * WeightAt(down, intermediate, hidden, downLayout, i, n);
                }
                y[(r * hidden) + n] = (float)s;
            }
        }
    }

    /// <summary><c>silu(v) = v / (1 + e^-v)</c> in double.</summary>
    public static double Silu(double v) => v / (1.0 + Math.Exp(-v));

    /// <summary><c>dst[i] = silu(gate[i]) · up[i]</c>.</summary>
    public static void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            dst[i] = (float)(Silu(gate[i]) * up[i]);
        }
    }

    /// <summary><c>dst[i] += src[i]</c>.</summary>
    public static void Add(Span<float> dst, ReadOnlySpan<float> src)
    {
        for (int i = 0; i < dst.Length; i++)
        {
            dst[i] = (float)((double)dst[i] + src[i]);
        }
    }

    /// <summary>RMSNorm per row, <c>x / sqrt(mean(x²) + eps) · weight</c> (empty weight = none).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            double ss = 0;
            foreach (float v in row)
            {
                ss += (double)v * v;
            }
            double inv = 1.0 / Math.Sqrt((ss / cols) + eps);
            for (int c = 0; c < cols; c++)
            {
                double v = row[c] * inv;
                y[(r * cols) + c] = (float)(weight.IsEmpty ? v : v * weight[c]);
            }
        }
    }

    /// <summary>Interleaved RoPE: pair i of every head rotates by <c>θ = fl32(position · invFreq[i])</c>.</summary>
    public static void Rope(Span<float> x, int rows, int heads, ReadOnlySpan<int> positions, RopeTable table)
    {
        int d = table.HeadDim;
        for (int r = 0; r < rows; r++)
        {
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice(((r * heads) + h) * d, d);
                for (int i = 0; i < d / 2; i++)
                {
                    float theta = positions[r] * table.InvFreq[i];
                    double c = Math.Cos(theta);
                    double s = Math.Sin(theta);
                    double x0 = v[2 * i];
                    double x1 = v[(2 * i) + 1];
                    v[2 * i] = (float)((x0 * c) - (x1 * s));
                    v[(2 * i) + 1] = (float)((x0 * s) + (x1 * c));
                }
            }
        }
    }

    /// <summary>Attention with the causal / chunked mask and GQA of <see cref="AttentionParams"/>; no visible key gives zeros.</summary>
    public static void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<float> k,
        ReadOnlySpan<float> v, int keys, int keyPositionStart, in AttentionParams p, Span<float> output)
    {
        int d = p.HeadDim;
        int group = p.Heads / p.KvHeads;
        var scores = new double[Math.Max(keys, 1)];
        for (int r = 0; r < rows; r++)
        {
            int pos = queryPositions[r];
            for (int h = 0; h < p.Heads; h++)
            {
                int kvh = h / group;
                var qv = q.Slice(((r * p.Heads) + h) * d, d);
                var o = output.Slice(((r * p.Heads) + h) * d, d);
                double max = double.NegativeInfinity;
                int visible = 0;
                for (int j = 0; j < keys; j++)
                {
                    scores[j] = double.NaN;
                    if (!IsVisible(pos, keyPositionStart + j, p.ChunkSize))
                    {
                        continue;
                    }
                    double s = 0;
                    for (int e = 0; e < d; e++)
                    {
                        s += (double)qv[e] * k[(((j * p.KvHeads) + kvh) * d) + e];
                    }
                    s *= p.Scale;
                    scores[j] = s;
                    max = Math.Max(max, s);
                    visible++;
                }
                var acc = new double[d];
                if (visible > 0)
                {
                    double sum = 0;
                    for (int j = 0; j < keys; j++)
                    {
                        if (!double.IsNaN(scores[j]))
                        {
                            scores[j] = Math.Exp(scores[j] - max);
                            sum += scores[j];
                        }
                    }
                    for (int j = 0; j < keys; j++)
                    {
                        if (double.IsNaN(scores[j]))
                        {
                            continue;
                        }
                        double w = scores[j] / sum;
                        for (int e = 0; e < d; e++)
                        {
                            acc[e] += w * v[(((j * p.KvHeads) + kvh) * d) + e];
                        }
                    }
                }
                for (int e = 0; e < d; e++)
                {
                    o[e] = (float)acc[e];
                }
            }
        }
    }

    /// <summary>The mask of <see cref="AttentionParams"/>: <c>key ≤ query</c> and, when chunked, the same fixed chunk.</summary>
    public static bool IsVisible(int queryPosition, int keyPosition, int chunkSize) =>
        keyPosition <= queryPosition && (chunkSize <= 0 || keyPosition / chunkSize == queryPosition / chunkSize);

    /// <summary>Row-wise softmax subtracting the row max.</summary>
    public static void SoftmaxStable(Span<float> x, int rows, int cols)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            double max = double.NegativeInfinity;
            foreach (float v in row)
            {
                max = Math.Max(max, v);
            }
            var e = new double[cols];
            double sum = 0;
            for (int c = 0; c < cols; c++)
            {
                e[c] = Math.Exp(row[c] - max);
                sum += e[c];
            }
            for (int c = 0; c < cols; c++)
            {
                row[c] = (float)(e[c] / sum);
            }
        }
    }

    /// <summary>Per row, the k best values (descending; ties by lower id; NaN ranks last).</summary>
    public static void TopK(ReadOnlySpan<float> scores, int rows, int cols, int k, Span<int> ids, Span<float> values)
    {
        var order = new int[cols];
        for (int r = 0; r < rows; r++)
        {
            var row = scores.Slice(r * cols, cols).ToArray();
            for (int c = 0; c < cols; c++)
            {
                order[c] = c;
            }
            Array.Sort(order, (a, b) => Compare(row, a, b));
            for (int i = 0; i < k; i++)
            {
                ids[(r * k) + i] = order[i];
                values[(r * k) + i] = row[order[i]];
            }
        }
    }

    /// <summary>Per row, the column of the largest non-NaN value (lowest id on ties; 0 when all are NaN).</summary>
    public static void Argmax(ReadOnlySpan<float> x, int rows, int cols, Span<int> ids)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            int best = 0;
            for (int c = 1; c < cols; c++)
            {
                if (float.IsNaN(row[best]) ? !float.IsNaN(row[c]) : row[c] > row[best])
                {
                    best = c;
                }
            }
            ids[r] = best;
        }
    }

    private static int Compare(float[] row, int a, int b)
    {
        float va = row[a];
        float vb = row[b];
        bool na = float.IsNaN(va);
        bool nb = float.IsNaN(vb);
        if (na != nb)
        {
            return na ? 1 : -1;
        }
        if (!na && va != vb)
        {
            return va > vb ? -1 : 1;
        }
        return a.CompareTo(b);
    }
}
