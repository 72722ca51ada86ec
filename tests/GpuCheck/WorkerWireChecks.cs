using System.Diagnostics;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.GpuCheck;

/// <summary>
/// The expert worker's compute on a CUDA device (issues #12 and #15): the request's wire rows uploaded as they are and
/// decoded, checked, computed and encoded on the device (<see cref="CudaWireBatch"/>, what <c>ExpertExecutor</c> runs on
/// a CUDA backend) against the host path it replaces (host decode with the finite check, host-span
/// <see cref="IKernelBackend.SwiGluFfnGrouped"/>, host encode): bitwise parity, then the two timed in the same run.
/// </summary>
internal static class WorkerWireChecks
{
    private const string Section = "Worker expert compute from wire rows (issues #12, #15)";

    private static readonly int s_divisor =
        int.TryParse(Environment.GetEnvironmentVariable("DISTRIBUTED_GPUCHECK_BENCH_DIVISOR"), out int d) && d > 0 ? d : 1;

    /// <summary>Host path vs device path, bit for bit: bf16, fp32 and FP8 wire rows; bf16 and fp32 replies; bf16, FP8 and W8A8 experts.</summary>
    public static void Parity(CheckReport report, CudaKernelBackend gpu)
    {
        const int h = 256;
        const int inter = 192;
        int[] counts = [5, 0, 17, 2];
        var rng = new Rng(1234);
        foreach (string experts in new[] { "bf16", "fp8 weight-only", "fp8 W8A8" })
        {
            var (gu, dn) = Experts(gpu, experts, counts.Length, h, inter, rng);
            try
            {
                foreach (WireDType dispatch in new[] { WireDType.Bf16, WireDType.Fp32, WireDType.Fp8E4M3 })
                {
                    foreach (WireDType reply in new[] { WireDType.Bf16, WireDType.Fp32 })
                    {
                        report.Check(Section, $"{experts} experts, {dispatch} rows → {reply} reply: device = host bitwise", () =>
                        {
                            int rows = counts.Sum();
                            byte[] payload = Payload(rng, rows, h, dispatch);
                            var expected = new byte[WireCodec.PayloadBytes(rows, h, reply)];
                            var actual = new byte[expected.Length];
                            HostPath(gpu, payload, dispatch, h, counts, gu, dn, reply, expected);
                            CudaTransferTotals before = gpu.Transfers.Snapshot();
                            DevicePath(gpu, payload, dispatch, h, counts, gu, dn, reply, actual);
                            CudaTransferTotals copies = gpu.Transfers.Snapshot() - before;
                            int first = expected.AsSpan().CommonPrefixLength(actual);
                            return (first == expected.Length, first == expected.Length
                                ? $"{rows} rows; device path: {copies.HostToDeviceCopies} uploads ({copies.HostToDeviceBytes} B), {copies.DeviceToHostCopies} download ({copies.DeviceToHostBytes} B)"
                                : $"reply byte {first} differs: host {expected[first]}, device {actual[first]}");
                        });
                    }
                }
            }
            finally
            {
                foreach (IWeightMatrix w in gu.Concat(dn))
                {
                    w.Dispose();
                }
            }
        }
    }

    /// <summary>
    /// One worker's share of a Maverick FP8 MoE layer (16 routed experts, H 5120, I 8192, FP8 weights) per request size:
    /// the host path against the device path, each request host bytes in → host bytes out, in the same run.
    /// </summary>
    public static void Bench(CheckReport report, CudaKernelBackend gpu, bool quick)
    {
        const int experts = 16;
        int h = 5120 / s_divisor, inter = 8192 / s_divisor;
        var rng = new Rng(77);
        var (gu, dn) = Experts(gpu, "fp8 weight-only", experts, h, inter, rng);
        try
        {
            foreach (int perExpert in quick ? new[] { 1, 8 } : new[] { 1, 8, 32 })
            {
                int[] counts = Enumerable.Repeat(perExpert, experts).ToArray();
                int rows = perExpert * experts;
                foreach (WireDType dispatch in new[] { WireDType.Bf16, WireDType.Fp8E4M3 })
                {
                    byte[] payload = Payload(rng, rows, h, dispatch);
                    var output = new byte[WireCodec.PayloadBytes(rows, h, WireDType.Bf16)];
                    int iterations = quick ? 3 : 8;
                    double Time(Action run)
                    {
                        run();
                        var sw = Stopwatch.StartNew();
                        for (int i = 0; i < iterations; i++)
                        {
                            run();
                        }
                        return sw.Elapsed.TotalMilliseconds / iterations;
                    }
                    CudaTransferTotals t0 = gpu.Transfers.Snapshot();
                    double hostMs = Time(() => HostPath(gpu, payload, dispatch, h, counts, gu, dn, WireDType.Bf16, output));
                    CudaTransferTotals t1 = gpu.Transfers.Snapshot();
                    double deviceMs = Time(() => DevicePath(gpu, payload, dispatch, h, counts, gu, dn, WireDType.Bf16, output));
                    CudaTransferTotals t2 = gpu.Transfers.Snapshot();
                    var hostCopies = t1 - t0;
                    var deviceCopies = t2 - t1;
                    report.Bench(Section, $"{rows} rows ({perExpert} per expert), {dispatch} rows → bf16 reply", new Dictionary<string, double>
                    {
                        ["host path ms"] = hostMs,
                        ["device path ms"] = deviceMs,
                        ["host/device time"] = hostMs / deviceMs,
                        ["host path B up per request"] = hostCopies.HostToDeviceBytes / (iterations + 1.0),
                        ["device path B up per request"] = deviceCopies.HostToDeviceBytes / (iterations + 1.0),
                        ["host path B down per request"] = hostCopies.DeviceToHostBytes / (iterations + 1.0),
                        ["device path B down per request"] = deviceCopies.DeviceToHostBytes / (iterations + 1.0),
                    }, "host = decode + finite check on the host, fp32 rows up, FFN, fp32 rows down, encode on the host; device = wire bytes up, decode/check/FFN/encode on the device, reply + verdicts down");
                }
            }
        }
        finally
        {
            foreach (IWeightMatrix w in gu.Concat(dn))
            {
                w.Dispose();
            }
        }
    }

    // The worker's host path (ExpertExecutor with deviceWire: false).
    private static void HostPath(CudaKernelBackend gpu, byte[] payload, WireDType dispatch, int h, int[] counts, List<IWeightMatrix> gu, List<IWeightMatrix> dn,
        WireDType reply, byte[] output)
    {
        int elements = counts.Sum() * h;
        var x = new float[elements];
        var y = new float[elements];
        if (!WireCodec.TryDecodeFinite(payload, dispatch, h, x, out int bad, out string why))
        {
            throw new InvalidOperationException($"row {bad} {why}");
        }
        gpu.SwiGluFfnGrouped(x, counts, gu, dn, y);
        WireCodec.EncodeRows(y, h, reply, output);
    }

    // The worker's device path (ExpertExecutor on a CUDA backend).
    private static void DevicePath(CudaKernelBackend gpu, byte[] payload, WireDType dispatch, int h, int[] counts, List<IWeightMatrix> gu, List<IWeightMatrix> dn,
        WireDType reply, byte[] output)
    {
        using CudaWireBatch batch = gpu.BeginWireBatch(payload.Length);
        payload.CopyTo(batch.Payload);
        int bad = batch.Run(Kernel(dispatch), h, counts, gu, dn, Kernel(reply));
        if (bad >= 0)
        {
            throw new InvalidOperationException($"row {bad} refused");
        }
        batch.Reply.CopyTo(output);
    }

    private static DType Kernel(WireDType dtype) => dtype switch
    {
        WireDType.Bf16 => DType.BF16,
        WireDType.Fp32 => DType.F32,
        _ => DType.F8E4M3,
    };

    private static byte[] Payload(Rng rng, int rows, int h, WireDType dtype)
    {
        float[] x = rng.Floats((long)rows * h, 2f);
        var bytes = new byte[WireCodec.PayloadBytes(rows, h, dtype)];
        WireCodec.EncodeRows(x, h, dtype, bytes);
        return bytes;
    }

    private static (List<IWeightMatrix> GateUp, List<IWeightMatrix> Down) Experts(CudaKernelBackend gpu, string kind, int count, int h, int inter, Rng rng)
    {
        var gu = new List<IWeightMatrix>();
        var dn = new List<IWeightMatrix>();
        if (kind == "bf16")
        {
            ushort[] g = rng.Bf16((long)h * 2 * inter, 0.05f);
            ushort[] d = rng.Bf16((long)inter * h, 0.05f);
            for (int e = 0; e < count; e++)
            {
                gu.Add(gpu.CreateWeight(g, h, 2 * inter, WeightLayout.InOut));
                dn.Add(gpu.CreateWeight(d, inter, h, WeightLayout.OutIn));
            }
            return (gu, dn);
        }
        var mode = kind == "fp8 W8A8" ? Fp8ActivationMode.PerTokenFp8 : Fp8ActivationMode.WeightOnly;
        byte[] gc = Fp8Checks.Codes((long)2 * inter * h, rng);
        byte[] dc = Fp8Checks.Codes((long)h * inter, rng);
        float[] gs = Fp8Checks.Scales(2 * inter, rng);
        float[] ds = Fp8Checks.Scales(h, rng);
        for (int e = 0; e < count; e++)
        {
            gu.Add(gpu.CreateFp8Weight(gc, gs, h, 2 * inter, WeightLayout.OutIn, mode));
            dn.Add(gpu.CreateFp8Weight(dc, ds, inter, h, WeightLayout.OutIn, mode));
        }
        return (gu, dn);
    }
}
