using System.Diagnostics;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Kernels.Cuda.Interop;

namespace Distributed.GpuCheck;

/// <summary>
/// Device benchmarks: copy bandwidth (the memory ceiling), the routed-expert GEMM pair at Maverick width
/// (hidden 5120, intermediate 8192: gate_up [5120, 16384] then down [8192, 5120], bf16, fp32 compute) over 16 experts
/// through each grouped path against one plain cublasGemmEx of the same total size (the compute ceiling), the backend's
/// SwiGluFfnGrouped end to end (host to host) in both precisions, and batch invariance.
/// Timings are CUDA events around a loop after warm-up (mean per iteration).
/// </summary>
internal static unsafe class GpuBenchmarks
{
    private const int Experts = 16;

    /// <summary>
    /// Dimension divisor for exercising this code on the CPU emulator (DISTRIBUTED_GPUCHECK_BENCH_DIVISOR, default 1:
    /// the real Maverick width).
    /// </summary>
    private static readonly int s_divisor =
        int.TryParse(Environment.GetEnvironmentVariable("DISTRIBUTED_GPUCHECK_BENCH_DIVISOR"), out int d) && d > 0 ? d : 1;

    private static readonly int Hidden = 5120 / s_divisor;
    private static readonly int Intermediate = 8192 / s_divisor;

    public static double CopyBandwidth(CheckReport report, CudaKernelBackend gpu, bool quick)
    {
        const string section = "Device-to-device copy (memory ceiling)";
        long bytes = quick ? 256L << 20 : 1L << 30;
        using var call = gpu.BeginCall();
        CudaCallContext ctx = call.Context;
        using DeviceBuffer a = DeviceBuffer.Allocate(gpu.ContextHandle, bytes);
        using DeviceBuffer b = DeviceBuffer.Allocate(gpu.ContextHandle, bytes);
        CuDriver.Check(CuDriver.cuMemsetD32Async(a.Pointer, 0x3F803F80u, (nuint)(bytes / 4), ctx.Stream.Value), "cuMemsetD32Async");
        double ms = TimeMs(ctx, 2, quick ? 5 : 20, () =>
            CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(b.Pointer, a.Pointer, (nuint)bytes, ctx.Stream.Value), "cuMemcpyDtoDAsync_v2"));
        double gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
        report.Bench(section, $"{bytes >> 20} MiB copy", new Dictionary<string, double> { ["ms"] = ms, ["GB/s (read+write)"] = gbps });
        call.Complete();
        return gbps;
    }

    public static void ExpertGemm(CheckReport report, CudaKernelBackend gpu, double copyGbps, bool quick)
    {
        string section = $"Expert GEMM pair at Maverick width (H={Hidden}, I={Intermediate}, bf16 in, fp32 out, 16 experts)";
        long guElems = (long)Hidden * 2 * Intermediate;
        long dnElems = (long)Intermediate * Hidden;
        int[] rowCounts = [1, 64, 512, 4096];
        int maxRows = rowCounts.Max();
        int iterations = quick ? 3 : 10;
        ushort[] random = new Rng(777).Bf16(guElems, 0.05f);
        using var call = gpu.BeginCall();
        CudaCallContext ctx = call.Context;
        var buffers = new List<DeviceBuffer>();
        try
        {
            DeviceBuffer Alloc(long bytes)
            {
                var d = DeviceBuffer.Allocate(gpu.ContextHandle, bytes);
                buffers.Add(d);
                return d;
            }
            DeviceBuffer gu = Alloc(Experts * guElems * 2);
            DeviceBuffer dn = Alloc(Experts * dnElems * 2);
            fixed (ushort* p = random)
            {
                CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(gu.Pointer, p, (nuint)(guElems * 2), ctx.Stream.Value), "cuMemcpyHtoDAsync_v2");
                CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(dn.Pointer, p + 12345, (nuint)(dnElems * 2), ctx.Stream.Value), "cuMemcpyHtoDAsync_v2");
                ctx.Stream.Synchronize();
            }
            for (int e = 1; e < Experts; e++)
            {
                CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(gu.Pointer + (ulong)(e * guElems * 2), gu.Pointer, (nuint)(guElems * 2), ctx.Stream.Value), "cuMemcpyDtoDAsync_v2");
                CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(dn.Pointer + (ulong)(e * dnElems * 2), dn.Pointer, (nuint)(dnElems * 2), ctx.Stream.Value), "cuMemcpyDtoDAsync_v2");
            }
            DeviceBuffer x = Alloc((long)maxRows * Hidden * 2);
            DeviceBuffer h = Alloc((long)maxRows * Intermediate * 2);
            DeviceBuffer t1 = Alloc((long)maxRows * 2 * Intermediate * 4);
            DeviceBuffer t2 = Alloc((long)maxRows * Hidden * 4);
            fixed (ushort* p = random)
            {
                CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(x.Pointer, p + 999, (nuint)((long)maxRows * Hidden * 2), ctx.Stream.Value), "cuMemcpyHtoDAsync_v2");
                CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(h.Pointer, p + 4242, (nuint)((long)maxRows * Intermediate * 2), ctx.Stream.Value), "cuMemcpyHtoDAsync_v2");
                ctx.Stream.Synchronize();
            }
            nint grouped = CuBlas.GroupedBatchedExAddress;
            foreach (int rows in rowCounts)
            {
                int experts = Math.Min(Experts, rows);
                int per = rows / experts;
                double flops = 2.0 * rows * ((double)Hidden * 2 * Intermediate + (double)Intermediate * Hidden);
                double Report(string path, double ms, string note = "")
                {
                    int active = path.StartsWith("ceiling", StringComparison.Ordinal) ? 1 : experts;
                    double weightBytes = active * (guElems + dnElems) * 2.0;
                    double weightGbps = weightBytes / (ms * 1e-3) / 1e9;
                    report.Bench(section, $"rows={rows} experts={active} {path}", new Dictionary<string, double>
                    {
                        ["ms"] = ms,
                        ["TFLOP/s"] = flops / (ms * 1e-3) / 1e12,
                        ["weight GB/s"] = weightGbps,
                        ["% of copy BW"] = copyGbps > 0 ? 100 * weightGbps / copyGbps : double.NaN,
                    }, note);
                    return ms;
                }

                // Ceiling: one expert's weights, all rows, one GemmEx per stage.
                double ceiling = TimeMs(ctx, 2, iterations, () =>
                {
                    Gemm(ctx, gu.Pointer, 2 * Intermediate, Hidden, x.Pointer, rows, t1.Pointer);
                    Gemm(ctx, dn.Pointer, Hidden, Intermediate, h.Pointer, rows, t2.Pointer);
                });
                Report("ceiling: plain cublasGemmEx (1 expert, same total size)", ceiling);

                double perGroup = TimeMs(ctx, 2, iterations, () =>
                {
                    for (int e = 0; e < experts; e++)
                    {
                        Gemm(ctx, gu.Pointer + (ulong)(e * guElems * 2), 2 * Intermediate, Hidden, x.Pointer + (ulong)((long)e * per * Hidden * 2), per,
                            t1.Pointer + (ulong)((long)e * per * 2 * Intermediate * 4));
                    }
                    for (int e = 0; e < experts; e++)
                    {
                        Gemm(ctx, dn.Pointer + (ulong)(e * dnElems * 2), Hidden, Intermediate, h.Pointer + (ulong)((long)e * per * Intermediate * 2), per,
                            t2.Pointer + (ulong)((long)e * per * Hidden * 4));
                    }
                });
                Report("per-group cublasGemmEx", perGroup);

                if (experts > 1)
                {
                    double strided = TimeMs(ctx, 2, iterations, () =>
                    {
                        StridedBatched(ctx, gu.Pointer, guElems, 2 * Intermediate, Hidden, x.Pointer, (long)per * Hidden, per, t1.Pointer,
                            (long)per * 2 * Intermediate, experts);
                        StridedBatched(ctx, dn.Pointer, dnElems, Hidden, Intermediate, h.Pointer, (long)per * Intermediate, per, t2.Pointer,
                            (long)per * Hidden, experts);
                    });
                    Report("cublasGemmStridedBatchedEx (equal groups, no padding needed here)", strided);
                }
                if (experts > 1)
                {
                    var (guInts, guScalars, guPtrs) = GroupedArgs(gu.Pointer, guElems, 2 * Intermediate, Hidden, x.Pointer, t1.Pointer, per, experts);
                    var (dnInts, dnScalars, dnPtrs) = GroupedArgs(dn.Pointer, dnElems, Hidden, Intermediate, h.Pointer, t2.Pointer, per, experts);
                    ulong guDevice = CudaKernelBackend.Upload<ulong>(ctx, guPtrs);
                    ulong dnDevice = CudaKernelBackend.Upload<ulong>(ctx, dnPtrs);
                    try
                    {
                        double batched = TimeMs(ctx, 2, iterations, () =>
                        {
                            CudaKernelBackend.BatchedGemm(ctx, CuBlas.OpN, 2 * Intermediate, per, Hidden, 2 * Intermediate, experts, guDevice);
                            CudaKernelBackend.BatchedGemm(ctx, CuBlas.OpN, Hidden, per, Intermediate, Hidden, experts, dnDevice);
                        });
                        Report("cublasGemmBatchedEx (pointer array; the backend's padded path)", batched);
                    }
                    catch (CudaException e) when (e.Status == CuBlas.StatusNotSupported)
                    {
                        report.Bench(section, $"rows={rows} cublasGemmBatchedEx", new Dictionary<string, double>(), "CUBLAS_STATUS_NOT_SUPPORTED");
                    }
                    if (grouped == 0)
                    {
                        if (rows == rowCounts[1])
                        {
                            report.Bench(section, "cublasGemmGroupedBatchedEx", new Dictionary<string, double>(), "not exported by this cuBLAS");
                        }
                        continue;
                    }
                    foreach (var (cType, label) in new[] { (CuBlas.R32F, "fp32 out"), (CuBlas.R16BF, "bf16 out, not usable by the Split precision") })
                    {
                        try
                        {
                            double groupedMs = TimeMs(ctx, 2, iterations, () =>
                            {
                                CudaKernelBackend.GroupedGemm(ctx, grouped, guInts, guScalars, experts, guDevice, cType);
                                CudaKernelBackend.GroupedGemm(ctx, grouped, dnInts, dnScalars, experts, dnDevice, cType);
                            });
                            Report($"cublasGemmGroupedBatchedEx ({label})", groupedMs);
                        }
                        catch (CudaException e) when (e.Status == CuBlas.StatusNotSupported)
                        {
                            report.Bench(section, $"rows={rows} cublasGemmGroupedBatchedEx ({label})", new Dictionary<string, double>(), "CUBLAS_STATUS_NOT_SUPPORTED");
                        }
                    }
                }
            }
            call.Complete();
        }
        finally
        {
            foreach (DeviceBuffer b in buffers)
            {
                b.Dispose();
            }
        }
    }

    /// <summary>The backend's SwiGluFfnGrouped host to host at Maverick width, 16 experts, in each precision.</summary>
    public static void BackendFfn(CheckReport report, IReadOnlyList<(string Name, CudaKernelBackend Backend)> backends, bool quick)
    {
        string section = $"Backend SwiGluFfnGrouped host→host (H={Hidden}, I={Intermediate}, 16 experts)";
        ushort[] gu = new Rng(31).Bf16((long)Hidden * 2 * Intermediate, 0.02f);
        ushort[] dn = new Rng(32).Bf16((long)Intermediate * Hidden, 0.02f);
        foreach (var (name, backend) in backends)
        {
            var gus = new List<IWeightMatrix>();
            var dns = new List<IWeightMatrix>();
            try
            {
                var upload = Stopwatch.StartNew();
                for (int e = 0; e < Experts; e++)
                {
                    gus.Add(backend.CreateWeight(gu, Hidden, 2 * Intermediate, WeightLayout.InOut));
                    dns.Add(backend.CreateWeight(dn, Intermediate, Hidden, WeightLayout.InOut));
                }
                double uploadS = upload.Elapsed.TotalSeconds;
                double uploadedBytes = gus.Sum(w => (double)w.ResidentBytes) + dns.Sum(w => (double)w.ResidentBytes);
                report.Bench(section, $"{name}: CreateWeight upload of 16 experts", new Dictionary<string, double>
                {
                    ["s"] = uploadS,
                    ["GB/s"] = uploadedBytes / uploadS / 1e9,
                    ["device GiB"] = uploadedBytes / (1L << 30),
                });
                foreach (int rows in new[] { 16, 64, 512 })
                {
                    int[] counts = new int[Experts];
                    for (int i = 0; i < rows; i++)
                    {
                        counts[i % Experts]++;
                    }
                    float[] x = new Rng((ulong)rows).Floats((long)rows * Hidden, 1f);
                    var y = new float[x.Length];
                    backend.SwiGluFfnGrouped(x, counts, gus, dns, y);
                    int iters = quick ? 2 : 5;
                    var sw = Stopwatch.StartNew();
                    for (int i = 0; i < iters; i++)
                    {
                        backend.SwiGluFfnGrouped(x, counts, gus, dns, y);
                    }
                    double ms = sw.Elapsed.TotalMilliseconds / iters;
                    double flops = 2.0 * rows * 3.0 * Hidden * Intermediate;
                    report.Bench(section, $"{name}: rows={rows}", new Dictionary<string, double>
                    {
                        ["ms"] = ms,
                        ["TFLOP/s (model FLOPs)"] = flops / (ms * 1e-3) / 1e12,
                        ["weight GB/s"] = Math.Min(rows, Experts) * 3.0 * Hidden * Intermediate * 2 / (ms * 1e-3) / 1e9,
                    }, $"path {backend.LastGroupedMode}");
                }
            }
            finally
            {
                foreach (IWeightMatrix w in gus.Concat(dns))
                {
                    w.Dispose();
                }
            }
        }
    }

    /// <summary>
    /// How far a row's result moves when the same row is computed alone, inside a larger batch, or inside a grouped
    /// call: the GEMMs are not batch invariant on CUDA (cuBLAS picks kernels per shape).
    /// </summary>
    public static void BatchInvariance(CheckReport report, IReadOnlyList<(string Name, CudaKernelBackend Backend)> backends)
    {
        const string section = "Batch invariance (max |diff| of the same rows, CUDA)";
        int k = Hidden;
        int n = Hidden;
        ushort[] w = new Rng(5).Bf16((long)k * n, 0.02f);
        float[] x = new Rng(6).Floats(512L * k, 1f);
        foreach (var (name, backend) in backends)
        {
            using IWeightMatrix wm = backend.CreateWeight(w, k, n, WeightLayout.OutIn);
            var reference = new float[8 * n];
            backend.MatMul(x.AsSpan(0, 8 * k), 8, wm, reference);
            var values = new Dictionary<string, double>();
            foreach (int rows in new[] { 1, 64, 512 })
            {
                var y = new float[rows * n];
                backend.MatMul(x.AsSpan(0, rows * k), rows, wm, y);
                int common = Math.Min(rows, 8);
                values[$"MatMul rows={rows} vs 8"] = ErrorStats.Of(y.AsSpan(0, common * n), reference.AsSpan(0, common * n)).MaxAbs;
            }
            report.Bench(section, $"{name} K=N={k}", values, "0 = invariant for these shapes");
        }
    }

    private static (int[] Ints, float[] Scalars, ulong[] Pointers) GroupedArgs(ulong weights, long weightElems, int m, int k,
        ulong b, ulong c, int per, int experts)
    {
        int[] ints = new int[9 * experts];
        float[] scalars = new float[2 * experts];
        ulong[] pointers = new ulong[3 * experts];
        for (int e = 0; e < experts; e++)
        {
            ints[e] = CuBlas.OpN;
            ints[experts + e] = CuBlas.OpN;
            ints[2 * experts + e] = m;
            ints[3 * experts + e] = per;
            ints[4 * experts + e] = k;
            ints[5 * experts + e] = m;
            ints[6 * experts + e] = k;
            ints[7 * experts + e] = m;
            ints[8 * experts + e] = 1;
            scalars[e] = 1f;
            pointers[e] = weights + (ulong)(e * weightElems * 2);
            pointers[experts + e] = b + (ulong)((long)e * per * k * 2);
            pointers[2 * experts + e] = c + (ulong)((long)e * per * m * 4);
        }
        return (ints, scalars, pointers);
    }

    /// <summary>Row-major C[n, m] = B[n, k] · W[k, m] (W InOut), bf16 in, fp32 out.</summary>
    private static void Gemm(CudaCallContext ctx, ulong w, int m, int k, ulong b, int n, ulong c)
    {
        float alpha = 1f;
        float beta = 0f;
        CuBlas.Check(CuBlas.cublasGemmEx(ctx.Blas.Value, CuBlas.OpN, CuBlas.OpN, m, n, k, &alpha, w, CuBlas.R16BF, m, b, CuBlas.R16BF, k,
            &beta, c, CuBlas.R32F, m, CuBlas.Compute32F, CuBlas.GemmDefault), "cublasGemmEx");
    }

    private static void StridedBatched(CudaCallContext ctx, ulong w, long strideW, int m, int k, ulong b, long strideB, int n, ulong c,
        long strideC, int batch)
    {
        float alpha = 1f;
        float beta = 0f;
        CuBlas.Check(CuBlas.cublasGemmStridedBatchedEx(ctx.Blas.Value, CuBlas.OpN, CuBlas.OpN, m, n, k, &alpha, w, CuBlas.R16BF, m, strideW,
            b, CuBlas.R16BF, k, strideB, &beta, c, CuBlas.R32F, m, strideC, batch, CuBlas.Compute32F, CuBlas.GemmDefault),
            "cublasGemmStridedBatchedEx");
    }

    private static double TimeMs(CudaCallContext ctx, int warmup, int iterations, Action body)
    {
        for (int i = 0; i < warmup; i++)
        {
            body();
        }
        ctx.Stream.Synchronize();
        ctx.Start.Record(ctx.Stream);
        for (int i = 0; i < iterations; i++)
        {
            body();
        }
        ctx.Stop.Record(ctx.Stream);
        return ctx.Stop.ElapsedSince(ctx.Start) / iterations;
    }
}
