using System.Diagnostics;
using System.Text.Json;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Distributed.Kernels.Cuda;

namespace Distributed.GpuCheck;

/// <summary>
/// Issue #12's device-resident path on a real GPU: parity of the device path (<see cref="CudaBackendOptions.DevicePath"/>
/// on, the default) against the host-staged path (off) and of CUDA graphs (<see cref="CudaBackendOptions.CudaGraphs"/>)
/// against the eager device path, and decode speed with graphs, the eager device path and the host-staged path on
/// tiny-maverick and on the Maverick-width synthetic stack, with the share of the HBM floor (the bytes a decode step must
/// read at the measured device copy rate).
/// </summary>
internal static class DevicePathChecks
{
    private const string ParitySection = "Device-resident path vs host-staged path (issue #12)";

    private const string GraphsSection = "CUDA graphs vs the eager device path (issue #12)";

    /// <summary>The input ids of the first <paramref name="count"/> prompts of the fixture's golden.json.</summary>
    private static int[][] FirstPrompts(string dir, int count)
    {
        var prompts = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json"))).RootElement.GetProperty("prompts");
        return [.. prompts.EnumerateArray().Take(count).Select(p => p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray())];
    }

    /// <summary>The largest |y| (at least 1e-30), the largest |x - y| and whether x and y are bitwise equal.</summary>
    private static (double Scale, double Worst, bool Bitwise) CompareLogits(float[] x, float[] y)
    {
        double scale = 1e-30, worst = 0;
        bool bitwise = true;
        for (int j = 0; j < y.Length; j++)
        {
            scale = Math.Max(scale, Math.Abs(y[j]));
            worst = Math.Max(worst, Math.Abs(x[j] - y[j]));
            bitwise &= BitConverter.SingleToInt32Bits(x[j]) == BitConverter.SingleToInt32Bits(y[j]);
        }
        return (scale, worst, bitwise);
    }

    /// <summary>A backend on <paramref name="like"/>'s device with CUDA graphs on (the device path's default otherwise).</summary>
    private static CudaKernelBackend WithGraphs(CudaKernelBackend like) => new(like.Info.Ordinal, new CudaBackendOptions { CudaGraphs = true });

    /// <summary>
    /// tiny-maverick's first three prompts (6 greedy tokens, fp32 KV) with CUDA graphs on and off: the same argmax and
    /// tokens, last logits within 1e-4 of their scale (bitwise on the emulator; on a GPU the bucket's GEMM shape may make
    /// cuBLAS pick another algorithm), graphs launched and no capture failed.
    /// </summary>
    public static void GraphsParity(CheckReport report, CudaKernelBackend eager, string fixturesRoot)
    {
        using var graphs = WithGraphs(eager);
        string dir = Path.Combine(fixturesRoot, "tiny-maverick");
        using Llama4Engine a = Llama4Engine.Load(dir, graphs);
        using Llama4Engine b = Llama4Engine.Load(dir, eager);
        a.KvDType = KvCacheDType.Fp32;
        b.KvDType = KvCacheDType.Fp32;
        var prompts = FirstPrompts(dir, 3);
        for (int i = 0; i < prompts.Length; i++)
        {
            int[] ids = prompts[i];
            report.Check(GraphsSection, $"tiny-maverick prompt {i}: graphs = eager device path", () =>
            {
                var x = a.InferAsync(ids, 6, CancellationToken.None).GetAwaiter().GetResult();
                var y = b.InferAsync(ids, 6, CancellationToken.None).GetAwaiter().GetResult();
                var (scale, worst, bitwise) = CompareLogits(x.LastLogits, y.LastLogits);
                var g = graphs.GraphCounters;
                bool pass = g.Launches > 0 && g.CaptureFailures == 0 && worst <= 1e-4 * scale && x.Argmax.SequenceEqual(y.Argmax) && x.NewTokens.SequenceEqual(y.NewTokens);
                return (pass, $"last logits max |diff| {worst:E3} (scale {scale:F3}), bitwise {(bitwise ? "yes" : "no")}; tokens [{string.Join(",", x.NewTokens)}] vs "
                    + $"[{string.Join(",", y.NewTokens)}]; graphs so far: {g.Launches} launches, {g.Captures} captures, {g.CaptureFailures} failed"
                    + (g.LastFailure is null ? "" : $" ({g.LastFailure})"));
            });
        }
    }

    /// <summary>
    /// tiny-maverick's first three prompts (4 greedy tokens, fp32 KV) with the device path on and off: the same argmax,
    /// routing and tokens, last logits within the Split GEMM tolerance (1e-4 of their scale); the detail says whether they
    /// were bitwise equal (they are on the emulator; on a GPU cuBLAS normally picks the same algorithm per shape).
    /// </summary>
    public static void Parity(CheckReport report, CudaKernelBackend on, string fixturesRoot)
    {
        using var off = new CudaKernelBackend(on.Info.Ordinal, new CudaBackendOptions { DevicePath = false });
        string dir = Path.Combine(fixturesRoot, "tiny-maverick");
        using Llama4Engine a = Llama4Engine.Load(dir, on);
        using Llama4Engine b = Llama4Engine.Load(dir, off);
        a.KvDType = KvCacheDType.Fp32;
        b.KvDType = KvCacheDType.Fp32;
        var prompts = FirstPrompts(dir, 3);
        for (int i = 0; i < prompts.Length; i++)
        {
            int[] ids = prompts[i];
            report.Check(ParitySection, $"tiny-maverick prompt {i}: device path = host-staged path", () =>
            {
                var x = a.InferAsync(ids, 4, CancellationToken.None).GetAwaiter().GetResult();
                bool tookDevicePath = a.Model.LastDeviceTraffic is not null;
                var y = b.InferAsync(ids, 4, CancellationToken.None).GetAwaiter().GetResult();
                var (scale, worst, bitwise) = CompareLogits(x.LastLogits, y.LastLogits);
                bool routing = y.Experts.All(kv => kv.Value.SelectMany(r => r).SequenceEqual(x.Experts[kv.Key].SelectMany(r => r)));
                bool pass = tookDevicePath && worst <= 1e-4 * scale && x.Argmax.SequenceEqual(y.Argmax) && x.NewTokens.SequenceEqual(y.NewTokens) && routing;
                return (pass, $"device path taken: {tookDevicePath}; last logits max |diff| {worst:E3} (scale {scale:F3}), bitwise {(bitwise ? "yes" : "no")}; " +
                    $"argmax {(x.Argmax.SequenceEqual(y.Argmax) ? "same" : "DIFFERENT")}, routing {(routing ? "same" : "DIFFERENT")}, tokens [{string.Join(",", x.NewTokens)}] vs [{string.Join(",", y.NewTokens)}]");
            });
        }
    }

    /// <summary>
    /// Decode ms/token on tiny-maverick (48-token prompt, 15 greedy steps; 4 with --quick): CUDA with graphs, with the
    /// device path on (eager) and off, and the CPU backend, each timed on the model's own steps (<see cref="StepMsPerToken"/>).
    /// </summary>
    public static void TinyDecode(CheckReport report, CudaKernelBackend on, CpuKernelBackend cpu, string fixturesRoot, bool quick)
    {
        using var off = new CudaKernelBackend(on.Info.Ordinal, new CudaBackendOptions { DevicePath = false });
        using var graphs = WithGraphs(on);
        string dir = Path.Combine(fixturesRoot, "tiny-maverick");
        int[] prompt = [.. JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json"))).RootElement.GetProperty("prompts")[3]
            .GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32())];
        int steps = quick ? 4 : 15;
        double Measure(IKernelBackend backend)
        {
            using Llama4Engine engine = Llama4Engine.Load(dir, backend);
            return StepMsPerToken(engine, prompt, steps);
        }
        double graphsMs = Measure(graphs), onMs = Measure(on), offMs = Measure(off), cpuMs = Measure(cpu);
        var g = graphs.GraphCounters;
        report.Bench("Decode step, tiny-maverick (48-token prompt, greedy)", "ms/token, graphs, device path on/off", new Dictionary<string, double>
        {
            ["CUDA graphs"] = graphsMs,
            ["CUDA device path"] = onMs,
            ["CUDA host-staged"] = offMs,
            ["CPU"] = cpuMs,
            ["device path/graphs"] = onMs / graphsMs,
            ["host-staged/device path"] = offMs / onMs,
            ["CPU/CUDA device path"] = cpuMs / onMs,
            ["CPU/CUDA graphs"] = cpuMs / graphsMs,
        }, $"CPU backend {cpu.Name}; model steps timed directly (warm-up run first: graphs captured before timing; {g.Launches} graph launches, "
            + $"{g.CaptureFailures} failed captures); issue #12 goal: CPU/CUDA > 1 (the GPU beats the CPU on the tiny model)");
    }

    /// <summary>
    /// Milliseconds per decode step of the model itself, batch 1: prefill <paramref name="prompt"/> in one step, then
    /// <paramref name="steps"/> greedy steps timed together; best of 2 after a warm-up run. The KV cache is the backend's
    /// store in its default element type (device bf16 on CUDA). Timed here rather than through the scheduler's token
    /// stream, whose arrival times say when the consumer woke up, not when a step finished.
    /// </summary>
    public static double StepMsPerToken(Llama4Engine engine, int[] prompt, int steps)
    {
        var c = engine.Config;
        var dtype = KvCacheDTypes.DefaultFor(engine.Backend);
        long bytes = KvBlockPool.BlocksNeeded(c, 16, prompt.Length + steps + 1, prompt.Length) * KvBlockPool.BytesPerBlock(c, 16, dtype);
        double best = double.MaxValue;
        // One pool (one KV store) for every run: CUDA graphs are captured per store, so the warm-up run captures them.
        using var pool = new KvBlockPool(c, 16, bytes, engine.Backend, prefixCaching: false, dtype: dtype);
        for (int run = 0; run < 3; run++)
        {
            using var cache = new PagedKvCache(pool);
            var r = engine.Model.ForwardAsync([new SequenceStep(cache, prompt, LogitsRequest.Last)], false, CancellationToken.None).AsTask().GetAwaiter().GetResult();
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < steps; s++)
            {
                int next = Argmax(r.Logits);
                r = engine.Model.ForwardAsync([new SequenceStep(cache, new[] { next }, LogitsRequest.Last)], false, CancellationToken.None).AsTask().GetAwaiter().GetResult();
            }
            if (run > 0)
            {
                best = Math.Min(best, sw.Elapsed.TotalMilliseconds / steps);
            }
        }
        return best;
    }

    private static int Argmax(float[] logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }
        return best;
    }

    /// <summary>
    /// Decode tok/s (batch 1, 128-token prompt, 32 steps timed by <see cref="StepMsPerToken"/>) on the synthetic maverick-h2048 stack with CUDA
    /// graphs, with the device path on (eager) and off, and the share of the HBM floor: floor = (coordinator weights on the device + top-k routed experts
    /// per MoE layer) bytes per token / the measured device copy rate (read+write GB/s). KV reads (128–160 positions) are
    /// left out of the floor (under 1% of the bytes here).
    /// </summary>
    public static void SyntheticDecode(CheckReport report, CudaKernelBackend on, double copyGbps)
    {
        using var off = new CudaKernelBackend(on.Info.Ordinal, new CudaBackendOptions { DevicePath = false });
        using var graphs = WithGraphs(on);
        string dir = GoldenRuns.SyntheticDir();
        var values = new Dictionary<string, double>();
        double bytesPerToken = 0;
        foreach (var (label, backend) in new[] { ("graphs", graphs), ("device path", on), ("host-staged", off) })
        {
            using Llama4Engine engine = Llama4Engine.Load(dir, backend);
            var c = engine.Config;
            int moeLayers = Enumerable.Range(0, c.NumLayers).Count(c.IsMoeLayer);
            bytesPerToken = engine.ResidentBytes + (double)moeLayers * c.TopK * 3L * c.HiddenSize * c.IntermediateSize * 2;
            var rng = new Random(5);
            int[] prompt = Enumerable.Range(0, 128).Select(_ => rng.Next(c.VocabSize)).ToArray();
            values[$"{label} tok/s"] = 1000 / StepMsPerToken(engine, prompt, 32);
        }
        double floorTokPerS = copyGbps > 0 ? copyGbps * 1e9 / bytesPerToken : double.NaN;
        values["HBM floor tok/s"] = floorTokPerS;
        values["graphs share of floor"] = values["graphs tok/s"] / floorTokPerS;
        values["device path share of floor"] = values["device path tok/s"] / floorTokPerS;
        values["host-staged share of floor"] = values["host-staged tok/s"] / floorTokPerS;
        values["graphs/device path"] = values["graphs tok/s"] / values["device path tok/s"];
        var g = graphs.GraphCounters;
        report.Bench("Decode on synthetic maverick-h2048 (issue #12)", "batch 1, 128-token prompt, 32 decode steps", values,
            $"{bytesPerToken / 1e6:F0} MB read per token (coordinator weights + top-k experts, bf16) at {copyGbps:F0} GB/s; goal: at least half the floor, " +
            $"with and without CUDA graphs ({g.Launches} graph launches, {g.CaptureFailures} failed captures)");
    }
}
