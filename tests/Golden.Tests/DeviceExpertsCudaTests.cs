using Distributed.Checkpoint;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Moe;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Grpc;
using Xunit.Abstractions;

namespace Distributed.Golden.Tests;

/// <summary>
/// In-process routed experts on the device path (issue #12): the MoE block's rows stay on the device (gather × score,
/// grouped FFN, slot sum by kernels) and equal the host-staged dispatch bit for bit, with the data-plane roundings an
/// in-process run can apply (<c>infer --wire</c>); FP8 rounding keeps the host round trip. Needs a GPU or the emulator
/// (<c>tests/Kernels.Tests/Cuda/Emulator/build.sh DIR</c>, then <c>DISTRIBUTED_CUDA_LIBRARY_PATH=DIR</c>).
/// </summary>
[Trait("Category", "Gpu")]
public sealed class DeviceExpertsCudaTests(ITestOutputHelper output)
{
    [DevicePathCudaTests.CudaTheory]
    [InlineData("tiny-maverick", WireDType.Fp32, WireDType.Fp32, true)]
    [InlineData("tiny-maverick", WireDType.Bf16, WireDType.Bf16, true)]
    [InlineData("tiny-maverick-fp8", WireDType.Bf16, WireDType.Fp32, true)]
    [InlineData("tiny-scout", WireDType.Fp32, WireDType.Bf16, true)]
    [InlineData("tiny-maverick", WireDType.Fp8E4M3, WireDType.Bf16, false)]
    public async Task InProcessExperts_OnDeviceRows_EqualTheHostStagedDispatch(string fixture, WireDType dispatch, WireDType combine, bool onDevice)
    {
        string directory = TestPaths.Fixture(fixture);
        var results = new List<(float[] Logits, DeviceStepTraffic? Traffic, Llama4TextConfig Config)>();
        foreach (bool devicePath in new[] { true, false })
        {
            using var backend = new CudaKernelBackend(0, new CudaBackendOptions { DevicePath = devicePath });
            using var checkpoint = CheckpointReader.Open(directory);
            using var experts = new LocalExpertDispatcher(checkpoint, backend) { WireRounding = (dispatch, combine) };
            using var engine = Llama4Engine.Load(directory, backend, experts);
            var c = engine.Config;
            using var pool = new KvBlockPool(c, 16, 1 << 22, backend, prefixCaching: false);
            using var cache = new PagedKvCache(pool);
            await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { 1, 2, 3, 5, 8 }, LogitsRequest.Last)], false, CancellationToken.None);
            var step = await engine.Model.ForwardAsync([new SequenceStep(cache, new[] { 13 }, LogitsRequest.Last)], false, CancellationToken.None);
            results.Add((step.Logits, engine.Model.LastDeviceTraffic, c));
        }
        var (device, host) = (results[0], results[1]);
        Assert.Null(host.Traffic);
        for (int i = 0; i < host.Logits.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(host.Logits[i]) != BitConverter.SingleToInt32Bits(device.Logits[i]))
            {
                Assert.Fail($"{fixture} {dispatch}/{combine}: logit {i} is {device.Logits[i]:R} on the device path, {host.Logits[i]:R} host-staged");
            }
        }
        var cfg = device.Config;
        int moe = Enumerable.Range(0, cfg.NumLayers).Count(cfg.IsMoeLayer);
        // A decode step of one row: the routing (and, when the experts cannot run on the device rows, the dispatched row)
        // comes down per MoE layer, then the logits.
        long rowsDown = onDevice ? 0 : moe * (long)cfg.HiddenSize * 4;
        Assert.Equal(moe * 8L * cfg.TopK + rowsDown + (long)cfg.VocabSize * 4, device.Traffic!.Value.DownloadedBytes);
        output.WriteLine($"{fixture} wire {dispatch}/{combine}: device path = host-staged bitwise; experts on device rows: {onDevice}; "
            + $"decode step {device.Traffic.Value.UploadedBytes} B up, {device.Traffic.Value.DownloadedBytes} B down");
    }
}
