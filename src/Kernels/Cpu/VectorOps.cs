using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// Row-wise and element-wise kernels. Every element goes through the same lane function whether it sits in a full
/// vector or in the tail (tails are processed in a zero-padded vector), so results never depend on where a row starts
/// or how long the buffer around it is: this is what keeps SiluMul inside SwiGluFfn batch invariant.
/// </summary>
internal static unsafe class VectorOps
{
    /// <summary><c>dst[i] = silu(gate[i]) · up[i]</c> with <c>silu(v) = v / (1 + e^-v)</c>; dst may alias gate or up.</summary>
    public static void SiluMul(SimdLevel simd, float* gate, float* up, float* dst, int n)
    {
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            for (; i + 16 <= n; i += 16)
            {
                SiluMul512(Vector512.Load(gate + i), Vector512.Load(up + i)).Store(dst + i);
            }
            if (i < n)
            {
                int m = n - i;
                float* g = stackalloc float[16];
                float* u = stackalloc float[16];
                CopyPadded(gate + i, g, m, 16);
                CopyPadded(up + i, u, m, 16);
                SiluMul512(Vector512.Load(g), Vector512.Load(u)).Store(g);
                Copy(g, dst + i, m);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            for (; i + 8 <= n; i += 8)
            {
                SiluMul256(Vector256.Load(gate + i), Vector256.Load(up + i)).Store(dst + i);
            }
            if (i < n)
            {
                int m = n - i;
                float* g = stackalloc float[8];
                float* u = stackalloc float[8];
                CopyPadded(gate + i, g, m, 8);
                CopyPadded(up + i, u, m, 8);
                SiluMul256(Vector256.Load(g), Vector256.Load(u)).Store(g);
                Copy(g, dst + i, m);
            }
        }
        else
        {
            for (; i < n; i++)
            {
                float v = gate[i];
                dst[i] = v / (1f + MathF.Exp(-v)) * up[i];
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> SiluMul512(Vector512<float> g, Vector512<float> u) =>
        g / (Vector512<float>.One + Vector512.Exp(-g)) * u;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> SiluMul256(Vector256<float> g, Vector256<float> u) =>
        g / (Vector256<float>.One + Vector256.Exp(-g)) * u;

    /// <summary>
    /// <c>dst[i] = gelu(x[i])</c>, the exact-erf GELU, with erfc by Abramowitz &amp; Stegun 7.1.26 (|error| ≤ 1.5e-7, the
    /// formula PyTorch's vectorized CPU erf uses): for <c>z = |x|/√2</c>, <c>erfc(z) ≈ t·(a1 + t·(a2 + … + t·a5))·e^(−z²)</c>
    /// with <c>t = 1/(1 + p·z)</c>; then <c>gelu = x − x/2·erfc(z)</c> for x ≥ 0 and <c>x/2·erfc(z)</c> for x &lt; 0 (no
    /// cancellation for negative x). dst may alias x.
    /// </summary>
    public static void Gelu(SimdLevel simd, float* x, float* dst, int n)
    {
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            for (; i + 16 <= n; i += 16)
            {
                Gelu512(Vector512.Load(x + i)).Store(dst + i);
            }
            if (i < n)
            {
                int m = n - i;
                float* t = stackalloc float[16];
                CopyPadded(x + i, t, m, 16);
                Gelu512(Vector512.Load(t)).Store(t);
                Copy(t, dst + i, m);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            for (; i + 8 <= n; i += 8)
            {
                Gelu256(Vector256.Load(x + i)).Store(dst + i);
            }
            if (i < n)
            {
                int m = n - i;
                float* t = stackalloc float[8];
                CopyPadded(x + i, t, m, 8);
                Gelu256(Vector256.Load(t)).Store(t);
                Copy(t, dst + i, m);
            }
        }
        else
        {
            for (; i < n; i++)
            {
                dst[i] = GeluScalar(x[i]);
            }
        }
    }

    // Abramowitz & Stegun 7.1.26.
    private const float ErfP = 0.3275911f;
    private const float ErfA1 = 0.254829592f;
    private const float ErfA2 = -0.284496736f;
    private const float ErfA3 = 1.421413741f;
    private const float ErfA4 = -1.453152027f;
    private const float ErfA5 = 1.061405429f;
    private const float InvSqrt2 = 0.70710678118654752f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Gelu512(Vector512<float> x)
    {
        var z = Vector512.Abs(x) * Vector512.Create(InvSqrt2);
        var t = Vector512<float>.One / (Vector512<float>.One + (Vector512.Create(ErfP) * z));
        var poly = t * (Vector512.Create(ErfA1) + (t * (Vector512.Create(ErfA2) + (t * (Vector512.Create(ErfA3)
            + (t * (Vector512.Create(ErfA4) + (t * Vector512.Create(ErfA5)))))))));
        var half = Vector512.Create(0.5f) * x * poly * Vector512.Exp(-(z * z));
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), x - half, half);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Gelu256(Vector256<float> x)
    {
        var z = Vector256.Abs(x) * Vector256.Create(InvSqrt2);
        var t = Vector256<float>.One / (Vector256<float>.One + (Vector256.Create(ErfP) * z));
        var poly = t * (Vector256.Create(ErfA1) + (t * (Vector256.Create(ErfA2) + (t * (Vector256.Create(ErfA3)
            + (t * (Vector256.Create(ErfA4) + (t * Vector256.Create(ErfA5)))))))));
        var half = Vector256.Create(0.5f) * x * poly * Vector256.Exp(-(z * z));
        return Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(x, Vector256<float>.Zero), x - half, half);
    }

    private static float GeluScalar(float x)
    {
        float z = MathF.Abs(x) * InvSqrt2;
        float t = 1f / (1f + (ErfP * z));
        float poly = t * (ErfA1 + (t * (ErfA2 + (t * (ErfA3 + (t * (ErfA4 + (t * ErfA5))))))));
        float half = 0.5f * x * poly * MathF.Exp(-(z * z));
        return x >= 0f ? x - half : half;
    }

    /// <summary>
    /// One LayerNorm row: <c>y = (x − mean) · r · w + b</c> with <c>mean = Σx/n</c> and <c>r = fl32(1/sqrt(Σ(x − mean)²/n + eps))</c>.
    /// Both sums accumulate in double lanes (then the tail, a fixed order for a given n): rows with a large common offset
    /// would otherwise lose the mean to fp32 rounding. y may alias x.
    /// </summary>
    public static void LayerNormRow(SimdLevel simd, float* x, int n, float* w, float* b, float eps, float* y)
    {
        double mean = SumDouble(simd, x, n, 0.0, squares: false) / n;
        double var = SumDouble(simd, x, n, mean, squares: true) / n;
        float fm = (float)mean;
        float r = (float)(1.0 / Math.Sqrt(var + eps));
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            var vm = Vector512.Create(fm);
            var vr = Vector512.Create(r);
            for (; i + 16 <= n; i += 16)
            {
                (((Vector512.Load(x + i) - vm) * vr * Vector512.Load(w + i)) + Vector512.Load(b + i)).Store(y + i);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            var vm = Vector256.Create(fm);
            var vr = Vector256.Create(r);
            for (; i + 8 <= n; i += 8)
            {
                (((Vector256.Load(x + i) - vm) * vr * Vector256.Load(w + i)) + Vector256.Load(b + i)).Store(y + i);
            }
        }
        for (; i < n; i++)
        {
            y[i] = ((x[i] - fm) * r * w[i]) + b[i];
        }
    }

    /// <summary>Σ x (or Σ (x − center)² when <paramref name="squares"/>) in double lanes, then the tail in order.</summary>
    private static double SumDouble(SimdLevel simd, float* x, int n, double center, bool squares)
    {
        int i = 0;
        double sum = 0;
        if (simd == SimdLevel.Vector512)
        {
            var c = Vector512.Create(center);
            var acc = Vector512<double>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var (lo, hi) = Vector512.Widen(Vector512.Load(x + i));
                if (squares)
                {
                    lo -= c;
                    hi -= c;
                    acc += (lo * lo) + (hi * hi);
                }
                else
                {
                    acc += lo + hi;
                }
            }
            sum = Vector512.Sum(acc);
        }
        else if (simd == SimdLevel.Vector256)
        {
            var c = Vector256.Create(center);
            var acc = Vector256<double>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(x + i));
                if (squares)
                {
                    lo -= c;
                    hi -= c;
                    acc += (lo * lo) + (hi * hi);
                }
                else
                {
                    acc += lo + hi;
                }
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            double d = squares ? x[i] - center : x[i];
            sum += squares ? d * d : d;
        }
        return sum;
    }

    /// <summary><c>dst[i] += src[i]</c>.</summary>
    public static void Add(SimdLevel simd, float* dst, float* src, int n)
    {
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            for (; i + 16 <= n; i += 16)
            {
                (Vector512.Load(dst + i) + Vector512.Load(src + i)).Store(dst + i);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            for (; i + 8 <= n; i += 8)
            {
                (Vector256.Load(dst + i) + Vector256.Load(src + i)).Store(dst + i);
            }
        }
        for (; i < n; i++)
        {
            dst[i] += src[i];
        }
    }

    /// <summary>
    /// One RMSNorm row: <c>y = (x · r) · w</c> with <c>r = fl32(1 / sqrt(Σx²/n + eps))</c> (the sum in fp32 lanes,
    /// the root in double); <paramref name="w"/> null means no weight. y may alias x.
    /// </summary>
    public static void RmsNormRow(SimdLevel simd, float* x, int n, float* w, float eps, float* y)
    {
        float sum = SumOfSquares(simd, x, n);
        float r = (float)(1.0 / Math.Sqrt(((double)sum / n) + eps));
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            var vr = Vector512.Create(r);
            if (w == null)
            {
                for (; i + 16 <= n; i += 16)
                {
                    (Vector512.Load(x + i) * vr).Store(y + i);
                }
            }
            else
            {
                for (; i + 16 <= n; i += 16)
                {
                    (Vector512.Load(x + i) * vr * Vector512.Load(w + i)).Store(y + i);
                }
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            var vr = Vector256.Create(r);
            if (w == null)
            {
                for (; i + 8 <= n; i += 8)
                {
                    (Vector256.Load(x + i) * vr).Store(y + i);
                }
            }
            else
            {
                for (; i + 8 <= n; i += 8)
                {
                    (Vector256.Load(x + i) * vr * Vector256.Load(w + i)).Store(y + i);
                }
            }
        }
        for (; i < n; i++)
        {
            float v = x[i] * r;
            y[i] = w == null ? v : v * w[i];
        }
    }

    /// <summary>Σ x² with a fixed lane-then-tail order for a given n.</summary>
    public static float SumOfSquares(SimdLevel simd, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (simd == SimdLevel.Vector512)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                acc = Vector512.FusedMultiplyAdd(v, v, acc);
            }
            sum = Vector512.Sum(acc);
        }
        else if (simd == SimdLevel.Vector256)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                acc = Vector256.FusedMultiplyAdd(v, v, acc);
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            sum = MathF.FusedMultiplyAdd(x[i], x[i], sum);
        }
        return sum;
    }

    /// <summary>
    /// In-place softmax of one row: <c>x[i] = e^(x[i] - max) / Σ e^(x[j] - max)</c>. A row containing NaN, or whose
    /// max is ±∞, yields NaN (as PyTorch does).
    /// </summary>
    public static void SoftmaxRow(SimdLevel simd, float* x, int n)
    {
        if (n == 0)
        {
            return;
        }
        float max = Max(simd, x, n);
        float sum = ExpSubtractInPlace(simd, x, n, max);
        Scale(simd, x, n, sum);
    }

    /// <summary>Largest value (IEEE max: NaN propagates).</summary>
    public static float Max(SimdLevel simd, float* x, int n)
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (simd == SimdLevel.Vector512 && n >= 16)
        {
            var acc = Vector512.Create(float.NegativeInfinity);
            for (; i + 16 <= n; i += 16)
            {
                acc = Vector512.Max(acc, Vector512.Load(x + i));
            }
            for (int l = 0; l < 16; l++)
            {
                max = MathF.Max(max, acc[l]);
            }
        }
        else if (simd == SimdLevel.Vector256 && n >= 8)
        {
            var acc = Vector256.Create(float.NegativeInfinity);
            for (; i + 8 <= n; i += 8)
            {
                acc = Vector256.Max(acc, Vector256.Load(x + i));
            }
            for (int l = 0; l < 8; l++)
            {
                max = MathF.Max(max, acc[l]);
            }
        }
        for (; i < n; i++)
        {
            max = MathF.Max(max, x[i]);
        }
        return max;
    }

    /// <summary><c>x[i] = e^(x[i] - max)</c> in place; returns Σ x[i] (lanes, then the tail in order).</summary>
    public static float ExpSubtractInPlace(SimdLevel simd, float* x, int n, float max)
    {
        int i = 0;
        float sum = 0f;
        if (simd == SimdLevel.Vector512)
        {
            var vm = Vector512.Create(max);
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var e = Vector512.Exp(Vector512.Load(x + i) - vm);
                e.Store(x + i);
                acc += e;
            }
            sum = Vector512.Sum(acc);
            if (i < n)
            {
                int m = n - i;
                float* t = stackalloc float[16];
                CopyPadded(x + i, t, m, 16);
                Vector512.Exp(Vector512.Load(t) - vm).Store(t);
                for (int l = 0; l < m; l++)
                {
                    x[i + l] = t[l];
                    sum += t[l];
                }
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            var vm = Vector256.Create(max);
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(x + i) - vm);
                e.Store(x + i);
                acc += e;
            }
            sum = Vector256.Sum(acc);
            if (i < n)
            {
                int m = n - i;
                float* t = stackalloc float[8];
                CopyPadded(x + i, t, m, 8);
                Vector256.Exp(Vector256.Load(t) - vm).Store(t);
                for (int l = 0; l < m; l++)
                {
                    x[i + l] = t[l];
                    sum += t[l];
                }
            }
        }
        else
        {
            for (; i < n; i++)
            {
                float e = MathF.Exp(x[i] - max);
                x[i] = e;
                sum += e;
            }
        }
        return sum;
    }

    /// <summary><c>x[i] /= divisor</c>.</summary>
    public static void Scale(SimdLevel simd, float* x, int n, float divisor)
    {
        int i = 0;
        if (simd == SimdLevel.Vector512)
        {
            var d = Vector512.Create(divisor);
            for (; i + 16 <= n; i += 16)
            {
                (Vector512.Load(x + i) / d).Store(x + i);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            var d = Vector256.Create(divisor);
            for (; i + 8 <= n; i += 8)
            {
                (Vector256.Load(x + i) / d).Store(x + i);
            }
        }
        for (; i < n; i++)
        {
            x[i] /= divisor;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyPadded(float* src, float* dst, int count, int width)
    {
        int l = 0;
        for (; l < count; l++)
        {
            dst[l] = src[l];
        }
        for (; l < width; l++)
        {
            dst[l] = 0f;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Copy(float* src, float* dst, int count)
    {
        for (int l = 0; l < count; l++)
        {
            dst[l] = src[l];
        }
    }
}
