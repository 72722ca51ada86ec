using System.Globalization;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;

namespace Distributed.Benchmarks;

/// <summary><c>cpu-ops</c>: attention at long context (Maverick shape) and the small row-wise ops.</summary>
internal static class CpuOpsBenchmark
{
    public static int Run(string[] args)
    {
        int i = Array.IndexOf(args, "--threads");
        int threads = i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : Environment.ProcessorCount;
        using var b = new CpuKernelBackend(threads);
        Console.WriteLine($"cpu-ops: {b.Name} | {b.Capabilities.Device} | load average {Timing.LoadAverage()}");
        Console.WriteLine("Attention shape: 40 heads, 8 kv heads, head_dim 128 (Llama 4 Maverick/Scout), fp32 K/V.");
        Console.WriteLine($"{"case",-52} {"ms",10} {"figure",24}");
        CacheResidentMatMul(b, 128, 512, 256);
        CacheResidentMatMul(b, 1, 512, 256);
        Attention(b, "decode, 8192 keys, chunk 8192 (sees 8192)", rows: 1, firstPos: 8191, keys: 8192, chunk: 8192);
        Attention(b, "decode, 16500 keys, full causal (sees 16500)", rows: 1, firstPos: 16499, keys: 16500, chunk: 0);
        Attention(b, "decode, 16500 keys, chunk 8192 (sees 116)", rows: 1, firstPos: 16499, keys: 16500, chunk: 8192);
        Attention(b, "prefill 128 rows at 8064..8191, chunk 8192", rows: 128, firstPos: 8064, keys: 8192, chunk: 8192);
        Attention(b, "prefill 512 rows at 0..511, causal", rows: 512, firstPos: 0, keys: 512, chunk: 0);

        var x = Floats(128 * 5120, 1);
        var w = Floats(5120, 2);
        var y = new float[x.Length];
        Row(b, "RmsNorm 1 x 5120", () => b.RmsNorm(x.AsSpan(0, 5120), 1, 5120, w, 1e-5f, y.AsSpan(0, 5120)), 5120);
        Row(b, "RmsNorm 128 x 5120", () => b.RmsNorm(x, 128, 5120, w, 1e-5f, y), 128 * 5120);
        var logits = Floats(202_048, 3);
        var ids = new int[8];
        var vals = new float[8];
        Row(b, "Argmax 1 x 202048", () => b.Argmax(logits, 1, logits.Length, ids.AsSpan(0, 1)), logits.Length);
        Row(b, "TopK(8) 1 x 202048", () => b.TopK(logits, 1, logits.Length, 8, ids, vals), logits.Length);
        var soft = logits.ToArray();
        Row(b, "SoftmaxStable 1 x 202048", () => b.SoftmaxStable(soft, 1, soft.Length), soft.Length);
        var table = RopeTable.Create(128, 500000.0, new Llama3RopeScaling(8.0, 1.0, 4.0, 8192));
        var q = Floats(128 * 40 * 128, 4);
        var positions = Enumerable.Range(8000, 128).ToArray();
        Row(b, "Rope 1 row x 40 heads x 128", () => b.Rope(q.AsSpan(0, 40 * 128), 1, 40, positions.AsSpan(0, 1), table), 40 * 128);
        Row(b, "Rope 128 rows x 40 heads x 128", () => b.Rope(q, 128, 40, positions, table), 128 * 40 * 128);
        return 0;
    }

    private static float[] Floats(int n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)((rng.NextDouble() * 2) - 1);
        }
        return a;
    }

    private static void Attention(CpuKernelBackend b, string label, int rows, int firstPos, int keys, int chunk)
    {
        var p = new AttentionParams(40, 8, 128, 1f / MathF.Sqrt(128), chunk);
        var q = Floats(rows * 40 * 128, 1);
        var k = Floats(keys * 8 * 128, 2);
        var v = Floats(keys * 8 * 128, 3);
        var o = new float[q.Length];
        var positions = Enumerable.Range(firstPos, rows).ToArray();
        double ms = Timing.MedianMs(() => b.Attention(q, rows, positions, k, v, keys, 0, p, o));
        long visible = 0;
        foreach (int pos in positions)
        {
            long lo = chunk > 0 ? pos - (pos % chunk) : 0;
            visible += pos - lo + 1;
        }
        double flops = 4.0 * visible * 128 * 40;
        double kvBytes = rows == 1 ? visible * 8 * 128 * 4 * 2.0 : 0;
        string figure = rows == 1
            ? FormattableString.Invariant($"{kvBytes / ms / 1e6:F1} GB/s of K+V")
            : FormattableString.Invariant($"{flops / ms / 1e6:F1} GFLOP/s");
        Console.WriteLine(FormattableString.Invariant($"{"Attention " + label,-52} {ms,10:F3} {figure,24}"));
    }

    private static void CacheResidentMatMul(CpuKernelBackend b, int rows, int k, int n)
    {
        var bits = new ushort[k * n];
        var rng = new Random(5);
        for (int i = 0; i < bits.Length; i++)
        {
            bits[i] = DTypeInfo.FloatToBf16((float)(rng.NextDouble() - 0.5));
        }
        using var w = b.CreateWeight(bits, k, n, WeightLayout.InOut);
        var x = Floats(rows * k, 6);
        var y = new float[rows * n];
        double ms = Timing.MedianMs(() => b.MatMul(x, rows, w, y), 0.5);
        string label = FormattableString.Invariant($"MatMul {rows}x{k}x{n} (weights in L2)");
        Console.WriteLine(FormattableString.Invariant($"{label,-52} {ms,10:F4} {2.0 * rows * k * n / ms / 1e6,15:F1} GFLOP/s"));
    }

    private static void Row(CpuKernelBackend b, string label, Action action, long elements)
    {
        _ = b;
        double ms = Timing.MedianMs(action, 0.5);
        Console.WriteLine(FormattableString.Invariant($"{label,-52} {ms,10:F4} {elements / ms / 1e3,17:F1} Melem/s"));
    }
}
