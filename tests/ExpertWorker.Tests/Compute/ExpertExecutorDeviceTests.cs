using Distributed.Checkpoint;
using Distributed.ExpertWorker.Compute;
using Distributed.ExpertWorker.Weights;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Tests.Compute;

/// <summary>
/// The worker's device path (wire rows uploaded as they are, decoded, checked, computed and encoded on the device) against
/// the host path (host decode, host-span FFN, host encode) on the same CUDA backend: the same reply bits for bf16, fp32
/// and FP8 wire rows, bf16, FP8 weight-only and W8A8 experts; the same refusals; fewer bytes uploaded. Needs a device or
/// the CPU emulator (<c>tests/Kernels.Tests/Cuda/Emulator/build.sh DIR</c>, then <c>DISTRIBUTED_CUDA_LIBRARY_PATH=DIR</c>);
/// skipped with the reason otherwise.
/// </summary>
[Trait("Category", "Gpu")]
public sealed class ExpertExecutorDeviceTests : IDisposable
{
    private const int Hidden = 64;
    private const int Inter = 40;
    private const int Layer = 1;
    private readonly Lazy<CudaKernelBackend> _gpu = new(() => new CudaKernelBackend());

    public void Dispose()
    {
        if (_gpu.IsValueCreated)
        {
            _gpu.Value.Dispose();
        }
    }

    public enum Experts
    {
        Bf16,
        Fp8WeightOnly,
        Fp8PerToken,
    }

    public static TheoryData<Experts, WireDType, WireDType> Cases()
    {
        var data = new TheoryData<Experts, WireDType, WireDType>();
        foreach (Experts e in Enum.GetValues<Experts>())
        {
            foreach (WireDType dispatch in new[] { WireDType.Bf16, WireDType.Fp32, WireDType.Fp8E4M3 })
            {
                foreach (WireDType reply in new[] { WireDType.Bf16, WireDType.Fp32 })
                {
                    data.Add(e, dispatch, reply);
                }
            }
        }
        return data;
    }

    [CudaTheory]
    [MemberData(nameof(Cases))]
    public void DeviceWire_EqualsHostPathBitwise_AndUploadsTheWireBytesOnce(Experts kind, WireDType dispatch, WireDType reply)
    {
        CudaKernelBackend gpu = _gpu.Value;
        int[] counts = [3, 0, 9, 1];
        using ShardSnapshot snapshot = Snapshot(gpu, kind, counts.Length);
        ExpertRequest request = Request(counts, dispatch, reply);
        int rows = (int)request.Rows;
        byte[] payload = Payload(rows, dispatch, seed: (int)kind * 10 + (int)dispatch);
        var host = new ExpertExecutor(gpu, deviceWire: false);
        var device = new ExpertExecutor(gpu);
        int replyBytes = (int)WireCodec.PayloadBytes(rows, Hidden, reply);
        var expected = new byte[replyBytes];
        var actual = new byte[replyBytes];

        CudaTransferTotals t0 = gpu.Transfers.Snapshot();
        Assert.True(host.TryExecute(request, payload, snapshot, expected, out _, out _, out string hostWhy), hostWhy);
        CudaTransferTotals t1 = gpu.Transfers.Snapshot();
        Assert.True(device.TryExecute(request, payload, snapshot, actual, out _, out _, out string deviceWhy), deviceWhy);
        CudaTransferTotals t2 = gpu.Transfers.Snapshot();

        Assert.False(host.UploadsWireRows);
        Assert.True(device.UploadsWireRows);
        Assert.Equal(0, host.DeviceRequests);
        Assert.Equal(1, device.DeviceRequests);
        int first = FirstDifference(expected, actual);
        Assert.True(first < 0, $"{kind} {dispatch}→{reply}: reply byte {first} differs (host {(first < 0 ? 0 : expected[first])}, device {(first < 0 ? 0 : actual[first])})");

        CudaTransferTotals hostCopies = t1 - t0;
        CudaTransferTotals deviceCopies = t2 - t1;
        long fp32Rows = (long)rows * Hidden * sizeof(float);
        // Host path: the decoded fp32 rows go up and fp32 rows come down. Device path: the wire bytes go up, and the reply
        // bytes plus one verdict int per row (8-byte aligned) come down in ONE copy. The FFN's own metadata uploads
        // (pointer arrays of the grouped GEMM) are the same in both.
        Assert.Equal(1, hostCopies.DeviceToHostCopies);
        Assert.Equal(fp32Rows, hostCopies.DeviceToHostBytes);
        Assert.Equal(1, deviceCopies.DeviceToHostCopies);
        Assert.Equal((replyBytes + 7) / 8 * 8 + 4L * rows, deviceCopies.DeviceToHostBytes);
        Assert.Equal(hostCopies.HostToDeviceCopies, deviceCopies.HostToDeviceCopies);
        Assert.Equal(hostCopies.HostToDeviceBytes - fp32Rows + payload.Length, deviceCopies.HostToDeviceBytes);
    }

    public static TheoryData<WireDType, int, string> BadRows() => new()
    {
        { WireDType.Bf16, 2, "nan" },
        { WireDType.Fp32, 5, "inf" },
        { WireDType.Fp8E4M3, 1, "scale" },
        { WireDType.Fp8E4M3, 4, "nan-code" },
        { WireDType.Fp8E4M3, 0, "overflow" },
    };

    [CudaTheory]
    [MemberData(nameof(BadRows))]
    public void DeviceWire_RefusesTheRowTheHostRefuses_WithTheSameWords(WireDType dispatch, int badRow, string how)
    {
        CudaKernelBackend gpu = _gpu.Value;
        int[] counts = [4, 3];
        using ShardSnapshot snapshot = Snapshot(gpu, Experts.Bf16, counts.Length);
        ExpertRequest request = Request(counts, dispatch, WireDType.Bf16);
        int rows = (int)request.Rows;
        byte[] payload = Payload(rows, dispatch, seed: 7);
        long rowBytes = WireCodec.RowBytes(Hidden, dispatch);
        Span<byte> row = payload.AsSpan((int)(badRow * rowBytes), (int)rowBytes);
        switch (how)
        {
            case "nan":
                BitConverter.TryWriteBytes(row.Slice(2 * 11, 2), (ushort)0x7FC0);
                break;
            case "inf":
                BitConverter.TryWriteBytes(row.Slice(4 * 63, 4), float.PositiveInfinity);
                break;
            case "scale":
                BitConverter.TryWriteBytes(row[..4], -1f);
                break;
            case "nan-code":
                row[4 + 17] = 0xFF;
                break;
            default:
                BitConverter.TryWriteBytes(row[..4], 1e38f);
                row[4 + 30] = 0x7E; // 448 · 1e38 overflows fp32
                break;
        }
        var output = new byte[WireCodec.PayloadBytes(rows, Hidden, WireDType.Bf16)];
        var host = new ExpertExecutor(gpu, deviceWire: false);
        var device = new ExpertExecutor(gpu);

        Assert.False(host.TryExecute(request, payload, snapshot, output, out _, out int hostRow, out string hostWhy));
        Assert.False(device.TryExecute(request, payload, snapshot, output, out _, out int deviceRow, out string deviceWhy));

        Assert.Equal(badRow, hostRow);
        Assert.Equal(hostRow, deviceRow);
        Assert.Equal(hostWhy, deviceWhy);
        Assert.NotEmpty(deviceWhy);
        // The backend is still usable after a refusal.
        byte[] good = Payload(rows, dispatch, seed: 8);
        Assert.True(device.TryExecute(request, good, snapshot, output, out _, out _, out string why), why);
    }

    [CudaFact]
    public void WireBatch_RefusesAPayloadOfTheWrongSize_AndUnknownFormats()
    {
        CudaKernelBackend gpu = _gpu.Value;
        using ShardSnapshot snapshot = Snapshot(gpu, Experts.Bf16, 1);
        var w = snapshot.Weights[new ExpertKey(Layer, 0)];
        using (CudaWireBatch batch = gpu.BeginWireBatch(2 * Hidden * 2 - 1))
        {
            var e = Assert.Throws<ArgumentException>(() => batch.Run(DType.BF16, Hidden, [2], [w.GateUp], [w.Down], DType.BF16));
            Assert.Contains("payload", e.Message, StringComparison.Ordinal);
        }
        using (CudaWireBatch batch = gpu.BeginWireBatch(2 * Hidden * 2))
        {
            Assert.Throws<ArgumentException>(() => batch.Run(DType.I32, Hidden, [2], [w.GateUp], [w.Down], DType.BF16));
            Assert.Throws<ArgumentException>(() => batch.Run(DType.BF16, Hidden, [2], [w.GateUp], [w.Down], DType.F8E4M3));
            Assert.Throws<InvalidOperationException>(() => batch.Reply.Length);
        }
    }

    private static int FirstDifference(byte[] a, byte[] b)
    {
        for (int i = 0; i < a.Length; i++)
        {
            if (a[i] != b[i])
            {
                return i;
            }
        }
        return -1;
    }

    private static ExpertRequest Request(int[] counts, WireDType dispatch, WireDType reply)
    {
        var request = new ExpertRequest { Layer = Layer, Dtype = dispatch, ReplyDtype = reply, HiddenSize = Hidden, Rows = (uint)counts.Sum() };
        for (int i = 0; i < counts.Length; i++)
        {
            request.Segments.Add(new ExpertSegment { Expert = (uint)i, Rows = (uint)counts[i] });
        }
        return request;
    }

    private static byte[] Payload(int rows, WireDType dtype, int seed)
    {
        var rng = new Random(seed);
        var x = new float[rows * Hidden];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = (float)(rng.NextDouble() * 4 - 2);
        }
        var bytes = new byte[WireCodec.PayloadBytes(rows, Hidden, dtype)];
        WireCodec.EncodeRows(x, Hidden, dtype, bytes);
        return bytes;
    }

    private static ShardSnapshot Snapshot(CudaKernelBackend gpu, Experts kind, int experts)
    {
        var weights = new Dictionary<ExpertKey, ExpertWeights>();
        var rng = new Random(42 + (int)kind);
        for (int e = 0; e < experts; e++)
        {
            weights[new ExpertKey(Layer, e)] = new ExpertWeights(Layer, e, Weight(gpu, kind, Hidden, 2 * Inter, rng), Weight(gpu, kind, Inter, Hidden, rng));
        }
        return new ShardSnapshot(1, [1], new ShardManifest(weights.Keys), weights, [.. weights.Values]);
    }

    private static IWeightMatrix Weight(CudaKernelBackend gpu, Experts kind, int k, int n, Random rng)
    {
        if (kind == Experts.Bf16)
        {
            var bits = new ushort[k * n];
            for (int i = 0; i < bits.Length; i++)
            {
                bits[i] = DTypeInfo.FloatToBf16((float)(rng.NextDouble() * 0.4 - 0.2));
            }
            return gpu.CreateWeight(bits, k, n, WeightLayout.OutIn);
        }
        var codes = new byte[k * n];
        for (int i = 0; i < codes.Length; i++)
        {
            byte c = (byte)rng.Next(0, 0x7F);
            codes[i] = (byte)(rng.Next(2) == 0 ? c : c | 0x80);
        }
        var scales = new float[n];
        for (int i = 0; i < n; i++)
        {
            scales[i] = (float)(0.001 + rng.NextDouble() * 0.002);
        }
        return gpu.CreateFp8Weight(codes, scales, k, n, WeightLayout.OutIn,
            kind == Experts.Fp8PerToken ? Fp8ActivationMode.PerTokenFp8 : Fp8ActivationMode.WeightOnly);
    }
}

/// <summary>A fact that needs a usable CUDA backend (a device or the emulator); skipped with the reason otherwise.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (CudaAvailability.Reason is { } reason)
        {
            Skip = $"needs a CUDA device (or the emulator via DISTRIBUTED_CUDA_LIBRARY_PATH): {reason}";
        }
    }
}

/// <summary>A theory that needs a usable CUDA backend; skipped with the reason otherwise.</summary>
public sealed class CudaTheoryAttribute : TheoryAttribute
{
    public CudaTheoryAttribute()
    {
        if (CudaAvailability.Reason is { } reason)
        {
            Skip = $"needs a CUDA device (or the emulator via DISTRIBUTED_CUDA_LIBRARY_PATH): {reason}";
        }
    }
}

internal static class CudaAvailability
{
    private static readonly Lazy<string?> s_reason = new(() =>
    {
        if (!CudaKernelBackend.TryCreate(0, out CudaKernelBackend? backend, out string reason))
        {
            return reason;
        }
        backend!.Dispose();
        return null;
    });

    public static string? Reason => s_reason.Value;
}
