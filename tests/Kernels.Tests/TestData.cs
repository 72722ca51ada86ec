using Distributed.Kernels.Cpu;

namespace Distributed.Kernels.Tests;

/// <summary>Deterministic inputs and comparison helpers shared by the kernel tests.</summary>
internal static class TestData
{
    /// <summary>Uniform floats in [-scale, scale).</summary>
    public static float[] Floats(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)((rng.NextDouble() * 2) - 1) * scale;
        }
        return a;
    }

    /// <summary>Random bf16 bits of values in [-scale, scale).</summary>
    public static ushort[] Bf16(int n, int seed, float scale = 0.5f)
    {
        var f = Floats(n, seed, scale);
        var a = new ushort[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = DTypeInfo.FloatToBf16(f[i]);
        }
        return a;
    }

    /// <summary>Asserts |actual - expected| ≤ tolerance(i) elementwise, naming the first offender.</summary>
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, Func<int, double> tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i];
            double a = actual[i];
            if (double.IsNaN(e) && double.IsNaN(a))
            {
                continue;
            }
            if (e == a)
            {
                continue;
            }
            double tol = tolerance(i);
            if (!(Math.Abs(a - e) <= tol))
            {
                Assert.Fail($"{what}: element {i} is {a:R}, expected {e:R} (|diff| {Math.Abs(a - e):E3} > tolerance {tol:E3})");
            }
        }
    }

    /// <summary>Asserts bitwise equality (NaN payloads included), naming the first differing element.</summary>
    public static void AssertBitwiseEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]:R}, expected bitwise {expected[i]:R}");
            }
        }
    }

    /// <summary>Largest |value|.</summary>
    public static double MaxAbs(ReadOnlySpan<float> a)
    {
        double m = 0;
        foreach (float v in a)
        {
            m = Math.Max(m, Math.Abs(v));
        }
        return m;
    }

    /// <summary>Root mean square.</summary>
    public static double Rms(ReadOnlySpan<float> a)
    {
        double s = 0;
        foreach (float v in a)
        {
            s += (double)v * v;
        }
        return a.Length == 0 ? 0 : Math.Sqrt(s / a.Length);
    }
}

/// <summary>
/// Backends shared by all tests (a backend owns a worker team; creating one per test would oversubscribe the
/// 2-core CI machine). Named by SIMD level and thread count; levels the machine cannot accelerate are left out.
/// </summary>
internal static class TestBackends
{
    private static readonly Lazy<Dictionary<string, CpuKernelBackend>> s_all = new(Create);

    /// <summary>Every configuration, as xunit theory data.</summary>
    public static TheoryData<string> Names
    {
        get
        {
            var data = new TheoryData<string>();
            foreach (var name in s_all.Value.Keys)
            {
                data.Add(name);
            }
            return data;
        }
    }

    /// <summary>Every configuration name.</summary>
    public static IEnumerable<string> AllNames => s_all.Value.Keys;

    /// <summary>The widest level with the default thread count (what production uses).</summary>
    public static CpuKernelBackend Default => s_all.Value.First().Value;

    public static CpuKernelBackend Get(string name) => s_all.Value[name];

    /// <summary>The same SIMD level as <paramref name="name"/> with one thread.</summary>
    public static CpuKernelBackend SingleThreaded(string name) => s_all.Value[name.Split('/')[0] + "/1"];

    private static Dictionary<string, CpuKernelBackend> Create()
    {
        var result = new Dictionary<string, CpuKernelBackend>();
        var top = SimdLevels.Detect();
        int threads = Math.Max(2, Environment.ProcessorCount);
        for (var level = top; level >= SimdLevel.Scalar; level--)
        {
            result[$"{level}/{threads}"] = new CpuKernelBackend(threads, level);
            result[$"{level}/1"] = new CpuKernelBackend(1, level);
        }
        return result;
    }
}
