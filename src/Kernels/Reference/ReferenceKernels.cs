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

    /// <summary>LayerNorm per row in double: <c>(x − mean) / sqrt(var + eps) · weight + bias</c>, biased variance.</summary>
    public static void LayerNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            double mean = 0;
            foreach (float v in row)
            {
                mean += v;
            }
            mean /= cols;
            double var = 0;
            foreach (float v in row)
            {
                var += (v - mean) * (v - mean);
            }
            double inv = 1.0 / Math.Sqrt((var / cols) + eps);
            for (int c = 0; c < cols; c++)
            {
                y[(r * cols) + c] = (float)(((row[c] - mean) * inv * weight[c]) + bias[c]);
            }
        }
    }

    /// <summary><c>gelu(v) = v/2 · (1 + erf(v/√2))</c> in double (negative v through erfc, without cancellation).</summary>
    public static double Gelu(double v) => v >= 0 ? 0.5 * v * (1.0 + Erf(v / Math.Sqrt(2.0))) : 0.5 * v * Erfc(-v / Math.Sqrt(2.0));

    /// <summary><c>dst[i] = gelu(x[i])</c> (exact erf form).</summary>
    public static void Gelu(ReadOnlySpan<float> x, Span<float> dst)
    {
        for (int i = 0; i < x.Length; i++)
        {
            dst[i] = (float)Gelu(x[i]);
        }
    }

    /// <summary>
    /// The error function to about 1e-15: for |z| ≤ 3 the series <c>erf(z) = 2/√π · e^(−z²) · Σ 2ⁿ z^(2n+1) / (1·3·…·(2n+1))</c>
    /// (all terms positive, so no cancellation), beyond it <c>1 − erfc(z)</c>. Relative precision in the tail: use <see cref="Erfc"/>.
    /// </summary>
    public static double Erf(double z)
    {
        if (double.IsNaN(z))
        {
            return double.NaN;
        }
        double a = Math.Abs(z);
        if (a > 3)
        {
            return Math.CopySign(1.0 - Erfc(a), z);
        }
        double term = a;
        double sum = a;
        for (int n = 1; n < 200 && term > sum * 1e-17; n++)
        {
            term *= 2 * a * a / ((2 * n) + 1);
            sum += term;
        }
        return Math.CopySign(2.0 / Math.Sqrt(Math.PI) * Math.Exp(-a * a) * sum, z);
    }

    /// <summary>
    /// The complementary error function: <c>1 − erf(z)</c> for z ≤ 1.5, else Laplace's continued fraction
    /// <c>erfc(z) = e^(−z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …))))</c>, evaluated from 100 levels deep.
    /// </summary>
    public static double Erfc(double z)
    {
        if (double.IsNaN(z))
        {
            return double.NaN;
        }
        if (z <= 1.5)
        {
            return 1.0 - Erf(z);
        }
        double f = z;
        for (int n = 100; n >= 1; n--)
        {
            f = z + (n / 2.0 / f);
        }
        return Math.Exp(-z * z) / Math.Sqrt(Math.PI) / f;
    }

    /// <summary><c>x[r, c] += bias[c]</c>.</summary>
    public static void AddBias(Span<float> x, int rows, ReadOnlySpan<float> bias)
    {
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < bias.Length; c++)
            {
                x[(r * bias.Length) + c] = (float)((double)x[(r * bias.Length) + c] + bias[c]);
            }
        }
    }

    /// <summary>Pair i of every head of row r rotated by the angle with cosine <c>cosSin[r, i, 0]</c> and sine <c>cosSin[r, i, 1]</c>.</summary>
    public static void RotatePairs(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<float> cosSin)
    {
        int pairs = headDim / 2;
        for (int r = 0; r < rows; r++)
        {
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice(((r * heads) + h) * headDim, headDim);
                for (int i = 0; i < pairs; i++)
                {
                    double c = cosSin[(((r * pairs) + i) * 2)];
                    double s = cosSin[(((r * pairs) + i) * 2) + 1];
                    double x0 = v[2 * i];
                    double x1 = v[(2 * i) + 1];
                    v[2 * i] = (float)((x0 * c) - (x1 * s));
                    v[(2 * i) + 1] = (float)((x0 * s) + (x1 * c));
                }
            }
        }
    }

    /// <summary>Unmasked attention within each block of <paramref name="tokens"/> rows (one kv head per query head).</summary>
    public static void BidirectionalAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int sequences, int tokens, int heads,
        int headDim, float scale, Span<float> output)
    {
        int block = tokens * heads * headDim;
        var p = new AttentionParams(heads, heads, headDim, scale, 0);
        var positions = new int[tokens];
        Array.Fill(positions, tokens - 1);
        for (int s = 0; s < sequences; s++)
        {
            Attention(q.Slice(s * block, block), tokens, positions, k.Slice(s * block, block), v.Slice(s * block, block), tokens, 0, p,
                output.Slice(s * block, block));
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
