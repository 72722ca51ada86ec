using System.Buffers;
using System.Diagnostics;
using Distributed.ExpertWorker.Weights;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.ExpertWorker.Compute;

/// <summary>
/// Runs one validated request: payload → fp32 rows (FP8 rows: code × row scale), the experts of every segment in one
/// grouped SwiGLU call (<see cref="IKernelBackend.SwiGluFfnGrouped"/>, whose per-row result does not depend on the
/// batch), fp32 rows → payload in the request's reply dtype (<see cref="WireCodec.ReplyDType"/>), same row order.
/// </summary>
/// <remarks>
/// On a <see cref="CudaKernelBackend"/> (unless <paramref name="deviceWire"/> is false) the payload goes to the device as
/// it arrived (<see cref="CudaWireBatch"/>: one copy into pinned staging, one upload of the wire bytes, decode + finite
/// check + FFN + reply encode on the device, one download); otherwise the host decodes, the backend's host-span call runs
/// the experts, and the host encodes. Both give the same reply bits and refuse the same rows with the same words.
/// </remarks>
/// <param name="backend">Where the experts run.</param>
/// <param name="expertActivations">What the FP8 experts multiply, for the handshake.</param>
/// <param name="deviceWire">False keeps a CUDA backend on the host decode/encode path (the comparison baseline of the
/// tests and the GPU check).</param>
public sealed class ExpertExecutor(IKernelBackend backend, string expertActivations = "weight-only", bool deviceWire = true)
{
    private long _deviceRequests;

    /// <summary>The arithmetic the experts compute in (<see cref="KernelCapabilities.Numerics"/>), for the handshake.</summary>
    public string Numerics => backend.Capabilities.Numerics;

    /// <summary>What the FP8 experts multiply (<c>weight-only</c> or <c>fp8-per-token</c>), for the handshake.</summary>
    public string ExpertActivations => expertActivations;

    /// <summary>True when requests run on the device from their wire bytes (<see cref="CudaWireBatch"/>).</summary>
    public bool UploadsWireRows => deviceWire && backend is CudaKernelBackend;

    /// <summary>Requests computed on the device from their wire bytes so far (diagnostics).</summary>
    public long DeviceRequests => Interlocked.Read(ref _deviceRequests);

    /// <summary>
    /// Computes the reply payload for <paramref name="request"/>, whose rows are in <paramref name="input"/> (header
    /// already validated, length included). The rows are decoded and checked in one pass
    /// (<see cref="WireCodec.TryDecodeFinite(ReadOnlySpan{byte}, WireDType, int, Span{float}, out int, out string)"/>:
    /// NaN/±Inf, and for FP8 rows the scale and the decoded products; the check holds for the decoded values computed
    /// on, even when <paramref name="input"/> is a ring region the peer can still write); a bad row stops the request
    /// before any expert runs and returns false with its index in <paramref name="nonFiniteRow"/> and what is wrong in
    /// <paramref name="why"/>. Otherwise writes the output rows to <paramref name="output"/>
    /// (<see cref="WireCodec.PayloadBytes"/> of the reply dtype, <see cref="WireCodec.ReplyDType"/>; may be
    /// <paramref name="input"/> itself on the shared ring: every row is decoded before any is encoded) and returns true.
    /// </summary>
    /// <exception cref="InvalidOperationException">An expert of the request is not in <paramref name="snapshot"/> (validation was skipped).</exception>
    public bool TryExecute(ExpertRequest request, ReadOnlySpan<byte> input, ShardSnapshot snapshot, Span<byte> output, out WorkerTimings timings,
        out int nonFiniteRow, out string why)
    {
        int hidden = (int)request.HiddenSize;
        int rows = (int)request.Rows;
        int elements = checked(rows * hidden);
        var gateUp = new IWeightMatrix[request.Segments.Count];
        var down = new IWeightMatrix[request.Segments.Count];
        var counts = new int[request.Segments.Count];
        for (int i = 0; i < request.Segments.Count; i++)
        {
            var seg = request.Segments[i];
            if (!snapshot.Weights.TryGetValue(new ExpertKey((int)request.Layer, (int)seg.Expert), out var w))
            {
                throw new InvalidOperationException($"expert {seg.Expert} of layer {request.Layer} is not loaded");
            }
            gateUp[i] = w.GateUp;
            down[i] = w.Down;
            counts[i] = (int)seg.Rows;
        }

        if (deviceWire && backend is CudaKernelBackend cuda)
        {
            return TryExecuteOnDevice(cuda, request, input, gateUp, down, counts, output, out timings, out nonFiniteRow, out why);
        }

        float[] x = ArrayPool<float>.Shared.Rent(elements);
        float[] y = ArrayPool<float>.Shared.Rent(elements);
        try
        {
            long t0 = Stopwatch.GetTimestamp();
            if (!WireCodec.TryDecodeFinite(input, request.Dtype, hidden, x.AsSpan(0, elements), out nonFiniteRow, out why))
            {
                timings = new WorkerTimings { DecodeNanos = Nanos(Stopwatch.GetTimestamp() - t0) };
                return false;
            }
            long t1 = Stopwatch.GetTimestamp();
            backend.SwiGluFfnGrouped(x.AsSpan(0, elements), counts, gateUp, down, y.AsSpan(0, elements));
            long t2 = Stopwatch.GetTimestamp();
            WireCodec.EncodeRows(y.AsSpan(0, elements), hidden, WireCodec.ReplyDType(request), output);
            long t3 = Stopwatch.GetTimestamp();
            timings = new WorkerTimings
            {
                DecodeNanos = Nanos(t1 - t0),
                ComputeNanos = Nanos(t2 - t1),
                EncodeNanos = Nanos(t3 - t2),
            };
            return true;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(x);
            ArrayPool<float>.Shared.Return(y);
        }
    }

    // The device path: DecodeNanos = the copy into pinned staging, ComputeNanos = upload, decode, experts, encode and
    // download, EncodeNanos = the copy of the reply out of pinned staging.
    private bool TryExecuteOnDevice(CudaKernelBackend cuda, ExpertRequest request, ReadOnlySpan<byte> input, IWeightMatrix[] gateUp, IWeightMatrix[] down,
        int[] counts, Span<byte> output, out WorkerTimings timings, out int nonFiniteRow, out string why)
    {
        int hidden = (int)request.HiddenSize;
        long t0 = Stopwatch.GetTimestamp();
        using CudaWireBatch batch = cuda.BeginWireBatch(input.Length);
        input.CopyTo(batch.Payload);
        long t1 = Stopwatch.GetTimestamp();
        int bad = batch.Run(ToKernel(request.Dtype), hidden, counts, gateUp, down, ToKernel(WireCodec.ReplyDType(request)));
        long t2 = Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _deviceRequests);
        if (bad >= 0)
        {
            // The words come from the host decoder run over the batch's private copy, the bytes the device checked: the
            // same row and reason the host path gives.
            long rowBytes = WireCodec.RowBytes(hidden, request.Dtype);
            float[] scratch = ArrayPool<float>.Shared.Rent(hidden);
            try
            {
                _ = WireCodec.TryDecodeFinite(batch.Payload.Slice((int)(bad * rowBytes), (int)rowBytes), request.Dtype, hidden, scratch.AsSpan(0, hidden),
                    out _, out why);
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
            nonFiniteRow = bad;
            timings = new WorkerTimings { DecodeNanos = Nanos(t1 - t0), ComputeNanos = Nanos(t2 - t1) };
            return false;
        }
        batch.Reply.CopyTo(output);
        long t3 = Stopwatch.GetTimestamp();
        nonFiniteRow = -1;
        why = "";
        timings = new WorkerTimings
        {
            DecodeNanos = Nanos(t1 - t0),
            ComputeNanos = Nanos(t2 - t1),
            EncodeNanos = Nanos(t3 - t2),
        };
        return true;
    }

    private static DType ToKernel(WireDType dtype) => dtype switch
    {
        WireDType.Bf16 => DType.BF16,
        WireDType.Fp32 => DType.F32,
        WireDType.Fp8E4M3 => DType.F8E4M3,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a wire dtype"),
    };

    private static ulong Nanos(long ticks) => (ulong)(ticks * 1_000_000_000.0 / Stopwatch.Frequency);
}
