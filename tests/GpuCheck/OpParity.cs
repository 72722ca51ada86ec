using Distributed.Kernels;
using Distributed.Kernels.Cuda;

namespace Distributed.GpuCheck;

/// <summary>Deterministic xorshift random data for the checks (never zeros: zeros hide unwritten outputs).</summary>
internal sealed class Rng(ulong seed)
{
    private ulong _state = seed == 0 ? 0x9E3779B97F4A7C15UL : seed;

    public ulong Next()
    {
        _state ^= _state << 13;
        _state ^= _state >> 7;
        _state ^= _state << 17;
        return _state;
    }

    /// <summary>Uniform in [-scale, scale).</summary>
    public float Uniform(float scale) => (float)(((Next() >> 11) * (1.0 / (1UL << 53)) * 2 - 1) * scale);

    public float[] Floats(long n, float scale)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++)
        {
            a[i] = Uniform(scale);
        }
        return a;
    }

    public ushort[] Bf16(long n, float scale)
    {
        var a = new ushort[n];
        for (long i = 0; i < n; i++)
        {
            a[i] = DTypeInfo.FloatToBf16(Uniform(scale));
        }
        return a;
    }

    public int Int(int maxExclusive) => (int)(Next() % (ulong)maxExclusive);
}

/// <summary>Error of a GPU result against the CPU backend's.</summary>
internal readonly record struct ErrorStats(double MaxAbs, double MaxRef, int NanMismatches, long WorstIndex)
{
    /// <summary>Max abs error over max |ref| (relative to the output's scale).</summary>
    public double Normalized => MaxAbs / Math.Max(MaxRef, 1e-30);

    public static ErrorStats Of(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        if (actual.Length != expected.Length)
        {
            throw new InvalidOperationException($"length mismatch {actual.Length} vs {expected.Length}");
        }
        double maxAbs = 0;
        double maxRef = 0;
        int nan = 0;
        long worst = -1;
        for (int i = 0; i < actual.Length; i++)
        {
            float a = actual[i];
            float e = expected[i];
            if (float.IsNaN(a) || float.IsNaN(e))
            {
                if (float.IsNaN(a) != float.IsNaN(e))
                {
                    nan++;
                }
                continue;
            }
            if (float.IsInfinity(e) || float.IsInfinity(a))
            {
                if (a != e)
                {
                    nan++;
                }
                continue;
            }
            double d = Math.Abs((double)a - e);
            if (d > maxAbs)
            {
                maxAbs = d;
                worst = i;
            }
            maxRef = Math.Max(maxRef, Math.Abs((double)e));
        }
        return new ErrorStats(maxAbs, maxRef, nan, worst);
    }

    public string Describe(double tolerance, bool normalized) =>
        $"max abs {MaxAbs:0.###e+0}, max |ref| {MaxRef:0.###}, normalized {Normalized:0.###e+0}, NaN/Inf mismatches {NanMismatches}; " +
        $"tolerance {(normalized ? "normalized" : "abs")} {tolerance:0.#e+0}";

    public bool Within(double tolerance, bool normalized) =>
        NanMismatches == 0 && (normalized ? Normalized : MaxAbs) <= tolerance;
}

/// <summary>
/// Every op of <see cref="IKernelBackend"/> on the CUDA backend against the CPU backend, with stated tolerances:
/// GEMM paths normalized error ≤ 1e-4 (<see cref="CudaPrecision.Split"/>) or ≤ 2e-2 (<see cref="CudaPrecision.Fast"/>);
/// fp32 elementwise/reduction ops ≤ 1e-5 normalized; ids and argmax exact.
/// </summary>
internal static class OpParity
{
    private const string Section = "Op parity vs CPU backend";
    private const double SplitTol = 1e-4;
    private const double FastTol = 2e-2;
    private const double Fp32Tol = 1e-5;

    /// <remarks>Variants that failed to start (null) are left out; their start-up failure is already a failed check.</remarks>
    public static void Run(CheckReport report, IKernelBackend cpu, CudaKernelBackend split, CudaKernelBackend? fast,
        CudaKernelBackend? perGroup, CudaKernelBackend? padded)
    {
        var rng = new Rng(12345);
        var precisions = new List<(string Name, CudaKernelBackend Gpu, double Tol)> { ("split", split, SplitTol) };
        if (fast is not null)
        {
            precisions.Add(("fast", fast, FastTol));
        }
        foreach (var (name, gpu, tol) in precisions)
        {
            foreach (WeightLayout layout in new[] { WeightLayout.InOut, WeightLayout.OutIn })
            {
                foreach (int rows in new[] { 1, 37 })
                {
                    report.Check(Section, $"MatMul {name} {layout} rows={rows} K=1024 N=768", () =>
                        MatMul(cpu, gpu, rng, rows, 1024, 768, layout, tol));
                }
            }
        }
        report.Check(Section, "SwiGluFfn split InOut rows=19 H=512 I=384", () => Ffn(cpu, split, rng, 19, 512, 384, WeightLayout.InOut, SplitTol));
        report.Check(Section, "SwiGluFfn split OutIn rows=5 H=256 I=640", () => Ffn(cpu, split, rng, 5, 256, 640, WeightLayout.OutIn, SplitTol));
        if (fast is not null)
        {
            report.Check(Section, "SwiGluFfn fast InOut rows=19 H=512 I=384", () => Ffn(cpu, fast, rng, 19, 512, 384, WeightLayout.InOut, FastTol));
        }
        int[] skewed = [0, 3, 1, 0, 17, 5, 2, 9];
        int[] even = [4, 4, 3, 4, 4, 4, 4, 4];
        var grouped = new List<(string Name, CudaKernelBackend? Gpu, double Tol)>
        {
            ("split auto", split, SplitTol),
            ("split per-group", perGroup, SplitTol),
            ("split padded-batched", padded, SplitTol),
            ("fast auto", fast, FastTol),
        };
        foreach (int[] counts in new[] { skewed, even })
        {
            foreach (var (name, gpu, tol) in grouped)
            {
                if (gpu is not null)
                {
                    report.Check(Section, $"SwiGluFfnGrouped {name} groups=[{string.Join(',', counts)}]",
                        () => Grouped(cpu, gpu, rng, counts, 256, 128, tol));
                }
            }
        }
        report.Check(Section, "RmsNorm weighted rows=33 cols=5120 (one tiny row: eps)", () => RmsNorm(cpu, split, rng, 33, 5120, true));
        report.Check(Section, "RmsNorm no weight (L2 qk-norm) rows=64 cols=16", () => RmsNorm(cpu, split, rng, 64, 16, false));
        report.Check(Section, "SiluMul n=100003 in [-20, 20]", () =>
        {
            float[] g = rng.Floats(100003, 20f);
            float[] u = rng.Floats(100003, 3f);
            var a = new float[g.Length];
            var e = new float[g.Length];
            split.SiluMul(g, u, a);
            cpu.SiluMul(g, u, e);
            return Verdict(ErrorStats.Of(a, e), Fp32Tol, true);
        });
        report.Check(Section, "Rope rows=29 heads=8 headDim=128 llama3 scaling, positions < 8192", () => Rope(cpu, split, rng));
        report.Check(Section, "Attention prefill chunked rows=40 keys=40 H=8 KV=2 D=64 chunk=16",
            () => Attention(cpu, split, rng, 40, 40, 0, 8, 2, 64, 16, i => i));
        report.Check(Section, "Attention prefill full causal rows=33 keys=33 H=4 KV=4 D=16",
            () => Attention(cpu, split, rng, 33, 33, 0, 4, 4, 16, 0, i => i));
        report.Check(Section, "Attention decode rows=1 keys=300 H=8 KV=1 D=128 chunk=128 (pos 299)",
            () => Attention(cpu, split, rng, 1, 300, 0, 8, 1, 128, 128, _ => 299));
        report.Check(Section, "Attention keyStart=10, queries at 5..14 (some see no key) chunk=8",
            () => Attention(cpu, split, rng, 10, 12, 10, 4, 2, 32, 8, i => 5 + i));
        report.Check(Section, "Attention 3000 keys full causal rows=4 H=2 KV=1 D=64",
            () => Attention(cpu, split, rng, 4, 3000, 0, 2, 1, 64, 0, i => 2996 + i));
        report.Check(Section, "Paged attention, KV in device blocks: decode rows=1 keys=300 block 16 first slot 7 H=8 KV=1 D=128 chunk=128",
            () => PagedAttention(cpu, split, rng, 1, 300, 7, 16, 8, 1, 128, 128));
        report.Check(Section, "Paged attention, KV in device blocks: prefill rows=40 keys=40 block 16 H=8 KV=2 D=64 chunk=16",
            () => PagedAttention(cpu, split, rng, 40, 40, 0, 16, 8, 2, 64, 16));
        report.Check(Section, "Paged attention, KV in device blocks: rows=4 keys=3000 block 16 first slot 9 H=2 KV=1 D=64",
            () => PagedAttention(cpu, split, rng, 4, 3000, 9, 16, 2, 1, 64, 0));
        report.Check(Section, "Paged attention, KV in device blocks: 3 sequences in one call (decode over 2000 keys, chunked prefill of 40, 5 rows over 17) H=8 KV=2 D=128 chunk=256",
            () => PagedAttentionBatch(cpu, split, rng));
        report.Check(Section, "SoftmaxStable rows=7 cols=1000 incl. logits ±1000", () => Softmax(cpu, split, rng));
        report.Check(Section, "TopK k=1 and k=4 rows=50 cols=128 with ties and NaN (ids exact)", () => TopK(cpu, split, rng));
        report.Check(Section, "Argmax rows=50 cols=512 with ties, NaN, -Inf (exact)", () => Argmax(cpu, split, rng));
        report.Check(Section, "Add n=12345 (bitwise)", () =>
        {
            float[] a = rng.Floats(12345, 5f);
            float[] b = rng.Floats(12345, 5f);
            float[] g = (float[])a.Clone();
            float[] c = (float[])a.Clone();
            split.Add(g, b);
            cpu.Add(c, b);
            bool same = g.AsSpan().SequenceEqual(c);
            return (same, same ? "bitwise equal" : $"differs: {ErrorStats.Of(g, c).Describe(0, false)}");
        });
    }

    private static (bool, string) Verdict(ErrorStats s, double tol, bool normalized) => (s.Within(tol, normalized), s.Describe(tol, normalized));

    private static (bool, string) MatMul(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int rows, int k, int n,
        WeightLayout layout, double tol)
    {
        ushort[] w = rng.Bf16((long)k * n, 0.1f);
        float[] x = rng.Floats((long)rows * k, 2f);
        using IWeightMatrix wc = cpu.CreateWeight(w, k, n, layout);
        using IWeightMatrix wg = gpu.CreateWeight(w, k, n, layout);
        var e = new float[rows * n];
        var a = new float[rows * n];
        cpu.MatMul(x, rows, wc, e);
        gpu.MatMul(x, rows, wg, a);
        var (ok, detail) = Verdict(ErrorStats.Of(a, e), tol, true);
        long expectedBytes = 2L * k * n;
        if (wg.ResidentBytes != expectedBytes)
        {
            return (false, $"ResidentBytes {wg.ResidentBytes}, expected {expectedBytes}; {detail}");
        }
        return (ok, detail);
    }

    private static (bool, string) Ffn(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int rows, int h, int inter,
        WeightLayout layout, double tol)
    {
        ushort[] gu = rng.Bf16((long)h * 2 * inter, 0.08f);
        ushort[] dn = rng.Bf16((long)inter * h, 0.08f);
        float[] x = rng.Floats((long)rows * h, 1.5f);
        using IWeightMatrix guc = cpu.CreateWeight(gu, h, 2 * inter, layout);
        using IWeightMatrix dnc = cpu.CreateWeight(dn, inter, h, layout);
        using IWeightMatrix gug = gpu.CreateWeight(gu, h, 2 * inter, layout);
        using IWeightMatrix dng = gpu.CreateWeight(dn, inter, h, layout);
        var e = new float[rows * h];
        var a = new float[rows * h];
        cpu.SwiGluFfn(x, rows, guc, dnc, e);
        gpu.SwiGluFfn(x, rows, gug, dng, a);
        return Verdict(ErrorStats.Of(a, e), tol, true);
    }

    private static (bool, string) Grouped(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int[] counts, int h, int inter, double tol)
    {
        var cpuGu = new List<IWeightMatrix>();
        var cpuDn = new List<IWeightMatrix>();
        var gpuGu = new List<IWeightMatrix>();
        var gpuDn = new List<IWeightMatrix>();
        try
        {
            foreach (int _ in counts)
            {
                ushort[] gu = rng.Bf16((long)h * 2 * inter, 0.1f);
                ushort[] dn = rng.Bf16((long)inter * h, 0.1f);
                cpuGu.Add(cpu.CreateWeight(gu, h, 2 * inter, WeightLayout.InOut));
                cpuDn.Add(cpu.CreateWeight(dn, inter, h, WeightLayout.InOut));
                gpuGu.Add(gpu.CreateWeight(gu, h, 2 * inter, WeightLayout.InOut));
                gpuDn.Add(gpu.CreateWeight(dn, inter, h, WeightLayout.InOut));
            }
            int rows = counts.Sum();
            float[] x = rng.Floats((long)rows * h, 1.5f);
            var e = new float[rows * h];
            var a = new float[rows * h];
            cpu.SwiGluFfnGrouped(x, counts, cpuGu, cpuDn, e);
            gpu.SwiGluFfnGrouped(x, counts, gpuGu, gpuDn, a);
            string mode = gpu is CudaKernelBackend cuda ? cuda.LastGroupedMode : "?";
            var (ok, detail) = Verdict(ErrorStats.Of(a, e), tol, true);
            detail = $"path {mode}; {detail}";
            // Each row must also equal the single-expert call for that row's group within the same tolerance.
            int offset = 0;
            double worstSingle = 0;
            for (int g = 0; g < counts.Length; g++)
            {
                if (counts[g] == 0)
                {
                    continue;
                }
                var single = new float[counts[g] * h];
                gpu.SwiGluFfn(x.AsSpan(offset * h, counts[g] * h), counts[g], gpuGu[g], gpuDn[g], single);
                worstSingle = Math.Max(worstSingle, ErrorStats.Of(single, a.AsSpan(offset * h, counts[g] * h)).Normalized);
                offset += counts[g];
            }
            return (ok && worstSingle <= tol, $"{detail}; grouped vs per-expert SwiGluFfn normalized {worstSingle:0.###e+0}");
        }
        finally
        {
            foreach (IWeightMatrix w in cpuGu.Concat(cpuDn).Concat(gpuGu).Concat(gpuDn))
            {
                w.Dispose();
            }
        }
    }

    private static (bool, string) RmsNorm(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int rows, int cols, bool weighted)
    {
        float[] x = rng.Floats((long)rows * cols, 2f);
        for (int c = 0; c < cols; c++)
        {
            x[c] *= 0.003f;
        }
        float[] w = weighted ? rng.Floats(cols, 1f) : [];
        var e = new float[x.Length];
        var a = new float[x.Length];
        cpu.RmsNorm(x, rows, cols, w, 1e-5f, e);
        gpu.RmsNorm(x, rows, cols, w, 1e-5f, a);
        var s = ErrorStats.Of(a, e);
        // In place (x and y the same buffer) must give the same result.
        float[] inPlace = (float[])x.Clone();
        gpu.RmsNorm(inPlace, rows, cols, w, 1e-5f, inPlace);
        bool same = inPlace.AsSpan().SequenceEqual(a);
        return (s.Within(Fp32Tol, true) && same, $"{s.Describe(Fp32Tol, true)}; in-place identical: {same}");
    }

    private static (bool, string) Rope(IKernelBackend cpu, IKernelBackend gpu, Rng rng)
    {
        const int rows = 29;
        const int heads = 8;
        RopeTable table = RopeTable.Create(128, 500000, new Llama3RopeScaling(8, 1, 4, 8192));
        float[] x = rng.Floats((long)rows * heads * 128, 2f);
        int[] pos = new int[rows];
        for (int i = 0; i < rows; i++)
        {
            pos[i] = rng.Int(8192);
        }
        float[] e = (float[])x.Clone();
        float[] a = (float[])x.Clone();
        cpu.Rope(e, rows, heads, pos, table);
        gpu.Rope(a, rows, heads, pos, table);
        return Verdict(ErrorStats.Of(a, e), Fp32Tol, true);
    }

    private static (bool, string) Attention(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int rows, int keys, int keyStart,
        int heads, int kvHeads, int headDim, int chunk, Func<int, int> position)
    {
        var p = new AttentionParams(heads, kvHeads, headDim, 1f / MathF.Sqrt(headDim), chunk);
        float[] q = rng.Floats((long)rows * heads * headDim, 2f);
        float[] k = rng.Floats((long)keys * kvHeads * headDim, 2f);
        float[] v = rng.Floats((long)keys * kvHeads * headDim, 2f);
        int[] pos = new int[rows];
        for (int i = 0; i < rows; i++)
        {
            pos[i] = position(i);
        }
        var e = new float[q.Length];
        var a = new float[q.Length];
        cpu.Attention(q, rows, pos, k, v, keys, keyStart, p, e);
        gpu.Attention(q, rows, pos, k, v, keys, keyStart, p, a);
        return Verdict(ErrorStats.Of(a, e), Fp32Tol, true);
    }

    /// <summary>
    /// Keys written to a device store through a shuffled block table (first key <paramref name="firstSlot"/> rows into its
    /// block), attention read through the table; against the CPU's contiguous attention on the same keys. Queries are the
    /// last <paramref name="rows"/> positions.
    /// </summary>
    private static (bool, string) PagedAttention(IKernelBackend cpu, IKernelBackend gpu, Rng rng, int rows, int keys, int firstSlot, int blockSize,
        int heads, int kvHeads, int headDim, int chunk)
    {
        var p = new AttentionParams(heads, kvHeads, headDim, 1f / MathF.Sqrt(headDim), chunk);
        int w = kvHeads * headDim;
        int blocks = (firstSlot + keys + blockSize - 1) / blockSize;
        using IKvBlockStore store = KvBlockStores.Create(gpu, blocks * 2, blockSize, w);
        if (store is HostKvBlockStore)
        {
            return (false, "the CUDA backend gave a host store");
        }
        // Blocks in reverse, every other one: position neighbours are far apart in the store.
        int[] table = Enumerable.Range(0, blocks).Select(i => 2 * (blocks - 1 - i) + 1).ToArray();
        float[] k = rng.Floats((long)keys * w, 2f);
        float[] v = rng.Floats((long)keys * w, 2f);
        int[] slots = Enumerable.Range(0, keys).Select(j => table[(firstSlot + j) / blockSize] * blockSize + (firstSlot + j) % blockSize).ToArray();
        store.Write(slots, k, v);
        float[] q = rng.Floats((long)rows * heads * headDim, 2f);
        int[] pos = Enumerable.Range(keys - rows, rows).ToArray();
        var e = new float[q.Length];
        var a = new float[q.Length];
        cpu.Attention(q, rows, pos, k, v, keys, 0, p, e);
        store.Attention(q, rows, pos, table, firstSlot, keys, 0, p, a);
        return Verdict(ErrorStats.Of(a, e), Fp32Tol, true);
    }

    /// <summary>Three sequences of one step in one batched device call, each against its own contiguous CPU attention.</summary>
    private static (bool, string) PagedAttentionBatch(IKernelBackend cpu, IKernelBackend gpu, Rng rng)
    {
        var p = new AttentionParams(8, 2, 128, 1f / MathF.Sqrt(128), 256);
        const int blockSize = 16;
        int w = p.KvHeads * p.HeadDim;
        using IKvBlockStore store = KvBlockStores.Create(gpu, 256, blockSize, w);
        var shapes = new[] { (Rows: 1, Keys: 2000, FirstSlot: 5), (Rows: 40, Keys: 40, FirstSlot: 0), (Rows: 5, Keys: 17, FirstSlot: 11) };
        int nextBlock = 255;
        var sequences = new List<KvSequenceView>();
        var q = new List<float>();
        var positions = new List<int>();
        var expected = new List<float>();
        foreach (var (rows, keys, firstSlot) in shapes)
        {
            int blocks = (firstSlot + keys + blockSize - 1) / blockSize;
            int[] table = Enumerable.Range(0, blocks).Select(_ => nextBlock--).ToArray();
            float[] k = rng.Floats((long)keys * w, 2f);
            float[] v = rng.Floats((long)keys * w, 2f);
            store.Write(Enumerable.Range(0, keys).Select(j => table[(firstSlot + j) / blockSize] * blockSize + (firstSlot + j) % blockSize).ToArray(), k, v);
            float[] qs = rng.Floats((long)rows * p.Heads * p.HeadDim, 2f);
            int[] pos = Enumerable.Range(keys - rows, rows).ToArray();
            var e = new float[qs.Length];
            cpu.Attention(qs, rows, pos, k, v, keys, 0, p, e);
            sequences.Add(new KvSequenceView(rows, table, firstSlot, keys, 0));
            q.AddRange(qs);
            positions.AddRange(pos);
            expected.AddRange(e);
        }
        var a = new float[q.Count];
        store.AttentionBatch(q.ToArray(), positions.ToArray(), sequences.ToArray(), p, a);
        return Verdict(ErrorStats.Of(a, expected.ToArray()), Fp32Tol, true);
    }

    private static (bool, string) Softmax(IKernelBackend cpu, IKernelBackend gpu, Rng rng)
    {
        const int rows = 7;
        const int cols = 1000;
        float[] x = rng.Floats(rows * cols, 8f);
        for (int c = 0; c < cols; c++)
        {
            x[c] = c % 2 == 0 ? 1000f : -1000f;
            x[cols + c] = 1000f - c * 0.01f;
        }
        float[] e = (float[])x.Clone();
        float[] a = (float[])x.Clone();
        cpu.SoftmaxStable(e, rows, cols);
        gpu.SoftmaxStable(a, rows, cols);
        bool finite = a.All(float.IsFinite);
        var s = ErrorStats.Of(a, e);
        return (finite && s.Within(Fp32Tol, false), $"{s.Describe(Fp32Tol, false)}; all finite: {finite}");
    }

    private static float[] TieData(Rng rng, int rows, int cols)
    {
        // Quantized values make ties common; NaN and -Inf check the "NaN never wins" and ordering rules.
        float[] x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = rng.Int(16) * 0.25f - 2f;
        }
        for (int r = 0; r < rows; r += 5)
        {
            x[r * cols + rng.Int(cols)] = float.NaN;
        }
        for (int c = 0; c < cols; c++)
        {
            x[cols + c] = float.NegativeInfinity;
        }
        x[cols + 7] = float.NaN;
        return x;
    }

    private static (bool, string) TopK(IKernelBackend cpu, IKernelBackend gpu, Rng rng)
    {
        const int rows = 50;
        const int cols = 128;
        float[] x = TieData(rng, rows, cols);
        var problems = new List<string>();
        foreach (int k in new[] { 1, 4 })
        {
            var ie = new int[rows * k];
            var ve = new float[rows * k];
            var ia = new int[rows * k];
            var va = new float[rows * k];
            cpu.TopK(x, rows, cols, k, ie, ve);
            gpu.TopK(x, rows, cols, k, ia, va);
            for (int i = 0; i < ie.Length; i++)
            {
                bool sameValue = BitConverter.SingleToInt32Bits(ve[i]) == BitConverter.SingleToInt32Bits(va[i]) ||
                    (float.IsNaN(ve[i]) && float.IsNaN(va[i]));
                if (ie[i] != ia[i] || !sameValue)
                {
                    problems.Add($"k={k} row {i / k} slot {i % k}: gpu ({ia[i]}, {va[i]}) cpu ({ie[i]}, {ve[i]})");
                }
            }
        }
        return (problems.Count == 0, problems.Count == 0 ? "ids and values identical" : $"{problems.Count} mismatches: {string.Join("; ", problems.Take(5))}");
    }

    private static (bool, string) Argmax(IKernelBackend cpu, IKernelBackend gpu, Rng rng)
    {
        const int rows = 50;
        const int cols = 512;
        float[] x = TieData(rng, rows, cols);
        var e = new int[rows];
        var a = new int[rows];
        cpu.Argmax(x, rows, cols, e);
        gpu.Argmax(x, rows, cols, a);
        var bad = Enumerable.Range(0, rows).Where(r => e[r] != a[r]).Select(r => $"row {r}: gpu {a[r]} cpu {e[r]}").ToList();
        return (bad.Count == 0, bad.Count == 0 ? "identical" : string.Join("; ", bad.Take(5)));
    }
}
