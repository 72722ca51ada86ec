using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Checkpoint;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Xunit.Abstractions;

namespace Distributed.Golden.Tests;

/// <summary>
/// The device-resident forward step (issue #12) against the host-staged CUDA path it replaces: the same kernels in the
/// same order, so on the emulator (deterministic cuBLAS per shape) every logit, every routing choice and every greedy
/// token is bitwise the same; and the device path stays within the golden tolerance. Needs a GPU or the emulator
/// (<c>tests/Kernels.Tests/Cuda/Emulator/build.sh DIR</c>, then <c>DISTRIBUTED_CUDA_LIBRARY_PATH=DIR</c>).
/// </summary>
[Trait("Category", "Gpu")]
public sealed class DevicePathCudaTests(ITestOutputHelper output)
{
    private static CudaKernelBackend Backend(bool devicePath) => new(0, new CudaBackendOptions { DevicePath = devicePath });

    [VisionGoldenCudaTests.CudaFact]
    public void Options_DefaultToTheDevicePath_AndTheFactoryPassesTheSwitch()
    {
        Assert.True(new KernelOptions().DevicePath);
        Assert.True(new CudaBackendOptions().DevicePath);
        using var off = (CudaKernelBackend)KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda, DevicePath = false }, null);
        Assert.False(off.Options.DevicePath);
        Assert.Contains("device path off", off.Describe(), StringComparison.Ordinal);
        using var on = (CudaKernelBackend)KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda }, null);
        Assert.True(on.Options.DevicePath);
        Assert.Contains("device path on", on.Describe(), StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>infer</c> on every prompt of the text fixtures: device path on equals off bitwise (last logits, prefill argmax and
    /// routing, greedy tokens), and the device path's last logits are within the golden tolerance (fp32 KV, as the
    /// fixtures were made).
    /// </summary>
    [CudaTheory]
    [InlineData("tiny-maverick")]
    [InlineData("tiny-scout")]
    [InlineData("tiny-maverick-fp8")]
    public async Task Infer_DevicePathEqualsHostStagedPath_AndMatchesTheGolden(string fixture)
    {
        var golden = GoldenFixture.Load(fixture);
        using var onBackend = Backend(devicePath: true);
        using var offBackend = Backend(devicePath: false);
        using var on = Llama4Engine.Load(golden.Directory, onBackend);
        using var off = Llama4Engine.Load(golden.Directory, offBackend);
        on.KvDType = KvCacheDType.Fp32;
        off.KvDType = KvCacheDType.Fp32;
        // The first three prompts (the emulator runs one block at a time); the CPU golden tests run them all.
        foreach (var p in golden.Prompts.Take(3))
        {
            int gen = Math.Min(4, p.NewTokens.Length);
            var a = await on.InferAsync(p.InputIds, gen, CancellationToken.None);
            Assert.NotNull(on.Model.LastDeviceTraffic);
            var b = await off.InferAsync(p.InputIds, gen, CancellationToken.None);
            Assert.Null(off.Model.LastDeviceTraffic);
            AssertBitwise(b.LastLogits, a.LastLogits, $"{fixture} {p.Name} last logits");
            Assert.Equal(b.Argmax, a.Argmax);
            Assert.Equal(b.NewTokens, a.NewTokens);
            Assert.Equal(b.Experts.Keys.Order(), a.Experts.Keys.Order());
            foreach (var (layer, ids) in b.Experts)
            {
                Assert.Equal(ids.SelectMany(r => r), a.Experts[layer].SelectMany(r => r));
            }
            double worst = p.LastLogits.Select((v, j) => (double)Math.Abs(a.LastLogits[j] - v)).Max();
            output.WriteLine($"{fixture} {p.Name}: device path = host-staged path bitwise; last-logit max |diff| to the golden {worst:E3} (tolerance {golden.LogitTolerance})");
            Assert.True(worst <= golden.LogitTolerance, $"{fixture} {p.Name}: {worst} > {golden.LogitTolerance}");
            Assert.Equal(p.NewTokens.Take(gen), a.NewTokens);
        }
    }

    /// <summary>
    /// One batched step of two sequences (one decoding after its prefill, one prefilling five tokens), in every KV element
    /// type: every observed tensor (embeddings, each layer's residual stream, router logits, final norm), the logits and
    /// the routing are bitwise the host-staged path's; and per step only the MoE layers' dispatched rows, their top-k and the
    /// logits come back to the host.
    /// </summary>
    [CudaTheory]
    [InlineData(KvCacheDType.Fp32)]
    [InlineData(KvCacheDType.Bf16)]
    [InlineData(KvCacheDType.Fp8E4M3)]
    public async Task BatchedSteps_EveryObservedTensorEqualsTheHostStagedPath(KvCacheDType dtype)
    {
        var runs = new List<(Recorder Recorder, List<float[]> Logits, List<int[]> Routing, List<DeviceStepTraffic?> Traffic)>();
        Llama4TextConfig? config = null;
        foreach (bool devicePath in new[] { true, false })
        {
            using var backend = Backend(devicePath);
            using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), backend);
            config = engine.Config;
            var recorder = new Recorder();
            engine.Model.Observer = recorder;
            using var pool = new KvBlockPool(engine.Config, 4, 1 << 22, backend, prefixCaching: false, dtype: dtype);
            using var first = new PagedKvCache(pool);
            using var second = new PagedKvCache(pool);
            var logits = new List<float[]>();
            var routing = new List<int[]>();
            var traffic = new List<DeviceStepTraffic?>();
            async Task StepAsync(params SequenceStep[] items)
            {
                var r = await engine.Model.ForwardAsync(items, captureRouting: true, CancellationToken.None);
                logits.Add(r.Logits);
                routing.Add([.. r.Routing!.OrderBy(kv => kv.Key).SelectMany(kv => kv.Value)]);
                traffic.Add(engine.Model.LastDeviceTraffic);
            }
            await StepAsync(new SequenceStep(first, new[] { 1, 17, 42, 99, 5, 7 }, LogitsRequest.All));
            await StepAsync(new SequenceStep(first, new[] { 11 }, LogitsRequest.Last), new SequenceStep(second, new[] { 3, 8, 13, 21, 34 }, LogitsRequest.Last));
            await StepAsync(new SequenceStep(second, new[] { 55 }, LogitsRequest.Last), new SequenceStep(first, new[] { 89 }, LogitsRequest.Last));
            runs.Add((recorder, logits, routing, traffic));
        }
        var (device, host) = (runs[0], runs[1]);
        Assert.Equal(host.Recorder.Names, device.Recorder.Names);
        for (int i = 0; i < host.Recorder.Tensors.Count; i++)
        {
            AssertBitwise(host.Recorder.Tensors[i], device.Recorder.Tensors[i], $"{dtype} KV: tensor {host.Recorder.Names[i]}");
        }
        for (int s = 0; s < host.Logits.Count; s++)
        {
            AssertBitwise(host.Logits[s], device.Logits[s], $"{dtype} KV: step {s} logits");
            Assert.Equal(host.Routing[s], device.Routing[s]);
            Assert.Null(host.Traffic[s]);
        }
        // Step 2 (two decode rows): downloads are, per MoE layer, the top-k ids and scores (the in-process experts run on
        // the device rows), then the logits, plus (with the observer) each layer's residual stream, each router's logits
        // and the final norm.
        var c = config!;
        int t = 2, moe = Enumerable.Range(0, c.NumLayers).Count(c.IsMoeLayer);
        long expected = moe * (8L * t * c.TopK) + 2L * c.VocabSize * 4
            + c.NumLayers * (long)t * c.HiddenSize * 4 + moe * (long)t * c.NumExperts * 4 + (long)t * c.HiddenSize * 4;
        Assert.Equal(expected, device.Traffic[2]!.Value.DownloadedBytes);
        output.WriteLine($"{dtype} KV: device path = host-staged path bitwise over {host.Recorder.Names.Count} observed tensors and 3 steps; "
            + $"decode step of 2 rows moved {device.Traffic[2]!.Value.UploadedBytes} bytes up and {device.Traffic[2]!.Value.DownloadedBytes} down (with the observer)");
    }

    /// <summary>Without the observer a decode step downloads only the routing and the logits: the in-process experts run on the device rows.</summary>
    [VisionGoldenCudaTests.CudaFact]
    public async Task DecodeStep_DownloadsOnlyTopKAndLogits_TheExpertsRunOnDeviceRows()
    {
        using var backend = Backend(devicePath: true);
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), backend);
        var c = engine.Config;
        using var pool = new KvBlockPool(c, 16, 1 << 22, backend, prefixCaching: false);
        using var cache = new PagedKvCache(pool);
        await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { 1, 2, 3 }, LogitsRequest.Last)], false, CancellationToken.None);
        await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { 4 }, LogitsRequest.Last)], false, CancellationToken.None);
        var (up, down, waits) = engine.Model.LastDeviceTraffic!.Value;
        int moe = Enumerable.Range(0, c.NumLayers).Count(c.IsMoeLayer);
        // One wait per MoE layer (the routing), one for the logits; dense layers never wait. The in-process routed experts
        // take the device rows and leave device rows: no dispatched row comes down, no combined row goes up.
        Assert.Equal(moe + 1, waits);
        Assert.Equal(moe * 8L * c.TopK + (long)c.VocabSize * 4, down);
        // Up: the embedding row, its position and temperature factor, one KV slot per layer, and per MoE layer the routed
        // rows' tokens and scores and each slot's row (three ints/floats per routed row).
        long expectedUp = (long)c.HiddenSize * 4 + 4 + (c.AttnTemperatureTuning ? 4 : 0) + 4L * c.NumLayers + moe * 12L * c.TopK;
        Assert.Equal(expectedUp, up);
        output.WriteLine($"tiny-maverick decode step on the device path: {up} bytes up, {down} bytes down, {waits} waits ({moe} MoE layers of {c.NumLayers})");

        // A host KV store (backendStore: false) keeps the host-staged path.
        using var hostPool = new KvBlockPool(c, 16, 1 << 22, backend, backendStore: false, prefixCaching: false);
        using var hostCache = new PagedKvCache(hostPool);
        await engine.Model.ForwardAsync([new SequenceStep(hostCache, new[] { 1 }, LogitsRequest.Last)], false, CancellationToken.None);
        Assert.Null(engine.Model.LastDeviceTraffic);
    }

    /// <summary>A theory that runs only where a CUDA backend can start (a GPU or the emulator); the skip names what is missing.</summary>
    public sealed class CudaTheoryAttribute : TheoryAttribute
    {
        public CudaTheoryAttribute()
        {
            if (!CudaKernelBackend.TryCreate(0, out var backend, out string reason))
            {
                Skip = $"needs a CUDA device (or the emulator via DISTRIBUTED_CUDA_LIBRARY_PATH): {reason}";
            }
            backend?.Dispose();
        }
    }

    private static void AssertBitwise(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]:R} on the device path, {expected[i]:R} on the host-staged path");
            }
        }
    }

    private sealed class Recorder : IActivationObserver
    {
        public List<string> Names { get; } = [];

        public List<float[]> Tensors { get; } = [];

        public void OnTensor(string name, ReadOnlySpan<float> data, int rows, int cols)
        {
            Names.Add(name);
            Tensors.Add(data.ToArray());
        }
    }
}
