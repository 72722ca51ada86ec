using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// Argmax and top-k over one row. Order: larger value first; equal values (including +0 and -0) by lower column id;
/// NaN ranks below every number, so it is only chosen when there are fewer than k non-NaN values.
/// </summary>
internal static unsafe class Selection
{
    /// <summary>Column of the largest non-NaN value (lowest id on ties); 0 when every value is NaN.</summary>
    public static int Argmax(SimdLevel simd, float* x, int n)
    {
        float max = float.NegativeInfinity;
        int i = 0;
        if (simd == SimdLevel.Vector512 && n >= 16)
        {
            var ninf = Vector512.Create(float.NegativeInfinity);
            var acc = ninf;
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                acc = Vector512.Max(acc, Vector512.ConditionalSelect(Vector512.Equals(v, v), v, ninf));
            }
            for (int l = 0; l < 16; l++)
            {
                max = MaxIgnoringNaN(max, acc[l]);
            }
        }
        else if (simd == SimdLevel.Vector256 && n >= 8)
        {
            var ninf = Vector256.Create(float.NegativeInfinity);
            var acc = ninf;
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                acc = Vector256.Max(acc, Vector256.ConditionalSelect(Vector256.Equals(v, v), v, ninf));
            }
            for (int l = 0; l < 8; l++)
            {
                max = MaxIgnoringNaN(max, acc[l]);
            }
        }
        for (; i < n; i++)
        {
            max = MaxIgnoringNaN(max, x[i]);
        }
        for (int j = 0; j < n; j++)
        {
            if (x[j] == max)
            {
                return j;
            }
        }
        return 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaxIgnoringNaN(float a, float b) => b > a ? b : a;

    /// <summary>True when (a, ia) ranks before (b, ib).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Before(float a, int ia, float b, int ib)
    {
        if (float.IsNaN(a))
        {
            return float.IsNaN(b) && ia < ib;
        }
        return float.IsNaN(b) || a > b || (a == b && ia < ib);
    }

    /// <summary>The <paramref name="k"/> best (value, id) pairs of a row, best first.</summary>
    public static void TopK(SimdLevel simd, float* x, int n, int k, int* ids, float* values)
    {
        int filled = 0;
        int i = 0;
        for (; i < n && filled < k; i++)
        {
            Insert(x[i], i, ids, values, filled);
            filled++;
        }
        while (i < n)
        {
            float kth = values[k - 1];
            if (!float.IsNaN(kth))
            {
                // Later ids lose ties, so only a strictly larger value can enter: skip whole vectors below the bar.
                if (simd == SimdLevel.Vector512)
                {
                    var bar = Vector512.Create(kth);
                    while (i + 16 <= n && !Vector512.GreaterThanAny(Vector512.Load(x + i), bar))
                    {
                        i += 16;
                    }
                }
                else if (simd == SimdLevel.Vector256)
                {
                    var bar = Vector256.Create(kth);
                    while (i + 8 <= n && !Vector256.GreaterThanAny(Vector256.Load(x + i), bar))
                    {
                        i += 8;
                    }
                }
                if (i >= n)
                {
                    break;
                }
            }
            float v = x[i];
            if (Before(v, i, kth, ids[k - 1]))
            {
                Insert(v, i, ids, values, k - 1);
            }
            i++;
        }
    }

    /// <summary>Inserts into the sorted prefix of length <paramref name="count"/> (the slot at count is overwritten).</summary>
    private static void Insert(float v, int id, int* ids, float* values, int count)
    {
        int pos = count;
        while (pos > 0 && Before(v, id, values[pos - 1], ids[pos - 1]))
        {
            values[pos] = values[pos - 1];
            ids[pos] = ids[pos - 1];
            pos--;
        }
        values[pos] = v;
        ids[pos] = id;
    }
}
