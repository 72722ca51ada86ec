using Distributed.Checkpoint;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Moe;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Grpc;
using Xunit.Abstractions;

namespace Distributed.Golden.Tests;

/// <summary>
/// CUDA graphs on the device-resident step (<see cref="CudaBackendOptions.CudaGraphs"/>) against the eager device step:
/// every logit and routing choice bitwise equal on the emulator, through the warm-up, capture and replay steps of a
/// bucket, for row counts on and between buckets, with KV in every element type; golden prompts decode the golden
/// tokens with graphs on. Needs a GPU or the emulator (<c>tests/Kernels.Tests/Cuda/Emulator/build.sh DIR</c>, then
/// <c>DISTRIBUTED_CUDA_LIBRARY_PATH=DIR</c>).
/// </summary>
[Trait("Category", "Gpu")]
public sealed class CudaGraphsGoldenTests(ITestOutputHelper output)
{
    private static CudaKernelBackend Backend(bool graphs) => new(0, new CudaBackendOptions { CudaGraphs = graphs });

    [VisionGoldenCudaTests.CudaFact]
    public void Option_DefaultsOff_AndTheFactoryPassesIt()
    {
        Assert.False(new KernelOptions().CudaGraphs);
        Assert.False(new CudaBackendOptions().CudaGraphs);
        using var on = (CudaKernelBackend)KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda, CudaGraphs = true }, null);
        Assert.True(on.Options.CudaGraphs);
        Assert.Contains("cuda graphs on", on.Describe(), StringComparison.Ordinal);
        using var off = (CudaKernelBackend)KernelBackendFactory.Create(new KernelOptions { Backend = KernelBackendKind.Cuda }, null);
        Assert.False(off.Options.CudaGraphs);
        Assert.Null(off.TryBeginGraphStep(1));
    }

    /// <summary>
    /// Steps of 1, 3 (bucket 4), 4 and 5 (bucket 8) decode rows over several sequences, each row count run for three
    /// steps (warm-up, capture, replay), graphs on against graphs off: logits and routing bitwise equal, graphs
    /// launched from the second step of each bucket on, no capture failing.
    /// </summary>
    [DevicePathCudaTests.CudaTheory]
    [InlineData("tiny-maverick", KvCacheDType.Fp32)]
    [InlineData("tiny-maverick", KvCacheDType.Bf16)]
    [InlineData("tiny-maverick", KvCacheDType.Fp8E4M3)]
    [InlineData("tiny-scout", KvCacheDType.Fp32)]
    public async Task DecodeSteps_GraphsOnEqualGraphsOffBitwise_OnAndBetweenBuckets(string fixture, KvCacheDType dtype)
    {
        var runs = new List<(List<float[]> Logits, List<int[]> Routing, List<int> Launches, CudaGraphCounters Counters)>();
        foreach (bool graphs in new[] { true, false })
        {
            using var backend = Backend(graphs);
            using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), backend);
            using var pool = new KvBlockPool(engine.Config, 4, 1 << 23, backend, prefixCaching: false, dtype: dtype);
            var caches = Enumerable.Range(0, 5).Select(_ => new PagedKvCache(pool)).ToArray();
            var logits = new List<float[]>();
            var routing = new List<int[]>();
            var launches = new List<int>();
            try
            {
                // Prompts of different lengths (eager: more than one row per sequence is fine for graphs too, but keep
                // the prefill out of the comparison's bucket schedule).
                for (int i = 0; i < caches.Length; i++)
                {
                    await engine.Model.ForwardAsync([new SequenceStep(caches[i], Enumerable.Range(1, 2 + 3 * i).ToArray(), LogitsRequest.Last)], false,
                        CancellationToken.None);
                }
                int token = 7;
                foreach (int rows in new[] { 1, 3, 4, 5 })
                {
                    for (int s = 0; s < 3; s++)
                    {
                        var items = caches.Take(rows).Select(c => new SequenceStep(c, new[] { token++ % engine.Config.VocabSize }, LogitsRequest.Last)).ToArray();
                        var r = await engine.Model.ForwardAsync(items, captureRouting: true, CancellationToken.None);
                        logits.Add(r.Logits);
                        routing.Add([.. r.Routing!.OrderBy(kv => kv.Key).SelectMany(kv => kv.Value)]);
                        launches.Add(engine.Model.LastGraphLaunches);
                        Assert.NotNull(engine.Model.LastDeviceTraffic);
                    }
                }
            }
            finally
            {
                foreach (var c in caches)
                {
                    c.Dispose();
                }
            }
            runs.Add((logits, routing, launches, backend.GraphCounters));
        }
        var (on, off) = (runs[0], runs[1]);
        for (int s = 0; s < off.Logits.Count; s++)
        {
            AssertBitwise(off.Logits[s], on.Logits[s], $"{fixture} {dtype} KV: step {s} logits");
            Assert.Equal(off.Routing[s], on.Routing[s]);
            Assert.Equal(0, off.Launches[s]);
        }
        // The first step of a new bucket warms up (no graph), later ones launch every segment as a graph: rows 1 (bucket 1)
        // and 3 (bucket 4) start new sets; rows 4 share bucket 4's set; rows 5 use bucket 8, which the 8-token prefill warmed up.
        int segments = on.Launches.Max();
        Assert.Equal(0, on.Launches[0]);
        Assert.Equal(0, on.Launches[3]);
        foreach (int s in new[] { 1, 2, 4, 5, 6, 7, 8, 10, 11 })
        {
            Assert.True(on.Launches[s] == segments, $"step {s}: {on.Launches[s]} graph launches, expected {segments}: [{string.Join(", ", on.Launches)}]");
        }
        Assert.True(on.Counters.CaptureFailures == 0, $"capture failed: {on.Counters.LastFailure}");
        Assert.True(on.Counters.Launches > 0 && on.Counters.Captures > 0);
        output.WriteLine($"{fixture} {dtype} KV: graphs on = off bitwise over {off.Logits.Count} decode steps; launches per step "
            + $"[{string.Join(", ", on.Launches)}]; {on.Counters}");
    }

    /// <summary>
    /// In-process experts on a graph step: where they can take the device rows (fp32/bf16 rounding) they run between
    /// the graphs and only the routing comes down per MoE layer; with FP8 dispatch rounding the rows go through the host.
    /// Either way every decode step (warm-up, capture, replay) equals the host-staged path bitwise.
    /// </summary>
    [DevicePathCudaTests.CudaTheory]
    [InlineData(WireDType.Fp32, WireDType.Fp32, true)]
    [InlineData(WireDType.Bf16, WireDType.Bf16, true)]
    [InlineData(WireDType.Fp8E4M3, WireDType.Bf16, false)]
    public async Task InProcessExperts_OnAGraphStep_EqualTheHostStagedPath(WireDType dispatch, WireDType combine, bool onDevice)
    {
        string directory = TestPaths.Fixture("tiny-maverick");
        var runs = new List<(List<float[]> Logits, List<DeviceStepTraffic?> Traffic, List<int> Launches)>();
        Llama4TextConfig? cfg = null;
        foreach (bool graphs in new[] { true, false })
        {
            using var backend = new CudaKernelBackend(0, new CudaBackendOptions { CudaGraphs = graphs, DevicePath = graphs });
            using var checkpoint = CheckpointReader.Open(directory);
            using var experts = new LocalExpertDispatcher(checkpoint, backend) { WireRounding = (dispatch, combine) };
            using var engine = Llama4Engine.Load(directory, backend, experts);
            cfg = engine.Config;
            using var pool = new KvBlockPool(engine.Config, 16, 1 << 22, backend, prefixCaching: false);
            using var cache = new PagedKvCache(pool);
            await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { 1, 2, 3, 5, 8 }, LogitsRequest.Last)], false, CancellationToken.None);
            var run = (Logits: new List<float[]>(), Traffic: new List<DeviceStepTraffic?>(), Launches: new List<int>());
            foreach (int token in new[] { 13, 21, 34 })
            {
                var step = await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { token }, LogitsRequest.Last)], false, CancellationToken.None);
                run.Logits.Add(step.Logits);
                run.Traffic.Add(engine.Model.LastDeviceTraffic);
                run.Launches.Add(engine.Model.LastGraphLaunches);
            }
            runs.Add(run);
        }
        var (on, host) = (runs[0], runs[1]);
        int moe = Enumerable.Range(0, cfg!.NumLayers).Count(cfg.IsMoeLayer);
        long rowsDown = onDevice ? 0 : moe * (long)cfg.HiddenSize * 4;
        for (int s = 0; s < host.Logits.Count; s++)
        {
            AssertBitwise(host.Logits[s], on.Logits[s], $"{dispatch}/{combine} step {s} logits");
            Assert.Null(host.Traffic[s]);
            Assert.Equal(moe * 8L * cfg.TopK + rowsDown + (long)cfg.VocabSize * 4, on.Traffic[s]!.Value.DownloadedBytes);
        }
        Assert.Equal([0, 2 * moe + 1, 2 * moe + 1], on.Launches);
        output.WriteLine($"{dispatch}/{combine}: graph steps = host-staged bitwise; experts on device rows: {onDevice}; graph launches "
            + $"[{string.Join(", ", on.Launches)}]; replay step {on.Traffic[2]!.Value.UploadedBytes} B up, {on.Traffic[2]!.Value.DownloadedBytes} B down");
    }

    /// <summary>Golden prompts through <c>infer</c> with graphs on: the golden greedy tokens and last logits within the tolerance.</summary>
    [DevicePathCudaTests.CudaTheory]
    [InlineData("tiny-maverick")]
    [InlineData("tiny-maverick-fp8")]
    public async Task Infer_WithGraphs_MatchesTheGolden(string fixture)
    {
        var golden = GoldenFixture.Load(fixture);
        using var backend = Backend(graphs: true);
        using var engine = Llama4Engine.Load(golden.Directory, backend);
        engine.KvDType = KvCacheDType.Fp32;
        foreach (var p in golden.Prompts.Take(2))
        {
            int gen = Math.Min(6, p.NewTokens.Length);
            var a = await engine.InferAsync(p.InputIds, gen, CancellationToken.None);
            double worst = p.LastLogits.Select((v, j) => (double)Math.Abs(a.LastLogits[j] - v)).Max();
            Assert.True(worst <= golden.LogitTolerance, $"{fixture} {p.Name}: {worst} > {golden.LogitTolerance}");
            Assert.Equal(p.NewTokens.Take(gen), a.NewTokens);
            output.WriteLine($"{fixture} {p.Name} with graphs: last-logit max |diff| to the golden {worst:E3}; {backend.GraphCounters}");
        }
        Assert.True(backend.GraphCounters.Launches > 0, "no graph was launched");
        Assert.Equal(0, backend.GraphCounters.CaptureFailures);
    }

    /// <summary><c>infer --backend cuda --cuda-graphs on</c> reaches the backend: graphs launched, the golden tokens; off launches none.</summary>
    [VisionGoldenCudaTests.CudaFact]
    public async Task Cli_CudaGraphsFlag_IsReadByInfer()
    {
        var golden = GoldenFixture.Load("tiny-maverick");
        var p = golden.Prompts[1];
        foreach (string flag in new[] { "on", "off" })
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int code = await Distributed.Coordinator.Cli.CommandLine.RunAsync(["infer", "--model", golden.Directory, "--prompt-ids", string.Join(",", p.InputIds),
                "--max-new-tokens", "4", "--backend", "cuda", "--cuda-graphs", flag, "--kv-dtype", "fp32"], stdout, stderr);
            Assert.True(code == 0, stderr.ToString());
            Assert.Contains($"new_tokens: {string.Join(",", p.NewTokens.Take(4))}", stdout.ToString(), StringComparison.Ordinal);
            Assert.Contains($"cuda graphs {flag}", stderr.ToString(), StringComparison.Ordinal);
            if (flag == "on")
            {
                var line = stderr.ToString().Split('\n').Single(l => l.StartsWith("cuda graphs: ", StringComparison.Ordinal));
                output.WriteLine(line);
                Assert.DoesNotContain("cuda graphs: 0 launches", line, StringComparison.Ordinal);
                Assert.Contains(" 0 failed captures", line, StringComparison.Ordinal);
            }
            else
            {
                Assert.DoesNotContain("cuda graphs: ", stderr.ToString(), StringComparison.Ordinal);
            }
        }
    }

    private static void AssertBitwise(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]:R} with graphs, {expected[i]:R} without");
            }
        }
    }
}
