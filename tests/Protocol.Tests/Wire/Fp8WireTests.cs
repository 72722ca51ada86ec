using System.Buffers.Binary;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;

namespace Distributed.Protocol.Tests.Wire;

/// <summary>
/// <c>--wire fp8</c>: rows dispatched as a per-row fp32 scale plus one E4M3 code per element (DeepEP's per-row
/// quantization), replies in bf16 or fp32. The codec round trip, its sizes, and every way a peer can send a bad FP8 frame.
/// </summary>
[Trait("Category", "Unit")]
public sealed class Fp8WireTests
{
    private static readonly TensorFrameValidatorTests.Shard View = new();

    private static float[] Rows(int rows, int hidden, int seed)
    {
        var rng = new Random(seed);
        var x = new float[rows * hidden];
        for (int i = 0; i < x.Length; i++)
        {
            // Magnitudes over 2^±12 so rows exercise normal and subnormal codes.
            x[i] = (float)((rng.NextDouble() - 0.5) * Math.ScaleB(1, rng.Next(-12, 12)));
        }
        return x;
    }

    [Fact]
    public void RoundTrip_EachRowIsItsScaleTimesItsCodes_WithinE4M3Precision()
    {
        const int R = 37, H = 130;
        var x = Rows(R, H, 1);
        x[5 * H] = 0f; // a row with zeros, and an all-zero row
        Array.Clear(x, 9 * H, H);
        var bytes = new byte[WireCodec.PayloadBytes(R, H, WireDType.Fp8E4M3)];
        Assert.Equal(R * (H + 4), bytes.Length);
        WireCodec.EncodeRows(x, H, WireDType.Fp8E4M3, bytes);
        var back = new float[R * H];
        WireCodec.DecodeRows(bytes, H, WireDType.Fp8E4M3, back);
        Assert.Equal(-1, WireCodec.FirstInvalidRow(bytes, WireDType.Fp8E4M3, H, out _));
        for (int r = 0; r < R; r++)
        {
            var row = x.AsSpan(r * H, H);
            float amax = 0;
            foreach (float v in row)
            {
                amax = Math.Max(amax, Math.Abs(v));
            }
            float s = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(r * (H + 4)));
            Assert.Equal(Math.Max(amax / 448f, 1f / (448f * 512f)), s);
            for (int i = 0; i < H; i++)
            {
                double err = Math.Abs(back[(r * H) + i] - row[i]);
                // 3 mantissa bits: half a step is 2^-4 of the value in the normal range, 2^-10 of s below it.
                Assert.True(err <= Math.Max(Math.Abs(row[i]) * 0.0625, s * Math.ScaleB(1, -10)) * 1.0001, $"row {r} element {i}: {row[i]} came back as {back[(r * H) + i]}");
            }
        }
        Assert.All(back.AsSpan(9 * H, H).ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Sizes_CountTheScale_AndOverflowIsMinusOne()
    {
        Assert.Equal(5124, WireCodec.RowBytes(5120, WireDType.Fp8E4M3));
        Assert.Equal(64 * 5124, WireCodec.PayloadBytes(64, 5120, WireDType.Fp8E4M3));
        Assert.Equal(-1, WireCodec.PayloadBytes(uint.MaxValue, 5120, WireDType.Fp8E4M3));
        Assert.Equal(-1, WireCodec.PayloadBytes(1, long.MaxValue, WireDType.Fp8E4M3));
        // FP8 rows need their width: the elementwise entry points refuse them.
        Assert.Throws<ArgumentException>(() => WireCodec.Encode(new float[4], WireDType.Fp8E4M3, new byte[8]));
        Assert.Throws<ArgumentException>(() => WireCodec.Decode(new byte[8], WireDType.Fp8E4M3, new float[4]));
    }

    private static ExpertRequest Fp8Request(WireDType reply = WireDType.Bf16) => new()
    {
        RequestId = 7, Layer = 1, PlanVersion = 5, Dtype = WireDType.Fp8E4M3, ReplyDtype = reply, HiddenSize = 4, Rows = 3,
        Segments = { new ExpertSegment { Expert = 0, Rows = 2 }, new ExpertSegment { Expert = 3, Rows = 1 } },
    };

    private static byte[] Payload(ExpertRequest r)
    {
        var bytes = new byte[WireCodec.PayloadBytes(r.Rows, r.HiddenSize, r.Dtype)];
        WireCodec.EncodeRows(Rows((int)r.Rows, (int)r.HiddenSize, 3), (int)r.HiddenSize, r.Dtype, bytes);
        return bytes;
    }

    [Fact]
    public void ValidFp8Request_IsOk_AndItsReplyIsBf16OrFp32()
    {
        foreach (var reply in new[] { WireDType.Bf16, WireDType.Fp32 })
        {
            var r = Fp8Request(reply);
            var payload = Payload(r);
            Assert.True(TensorFrameValidator.ValidateRequest(r, payload.Length, false, View).IsOk);
            Assert.True(TensorFrameValidator.CheckFinite(r, payload).IsOk);
            Assert.Equal(reply, WireCodec.ReplyDType(r));
            int replyBytes = 3 * 4 * (reply == WireDType.Fp32 ? 4 : 2);
            Assert.True(TensorFrameValidator.ValidateReply(new ExpertReply { RequestId = 7, Dtype = reply, Rows = 3, HiddenSize = 4 }, replyBytes, r).IsOk);
            var wrongDType = TensorFrameValidator.ValidateReply(new ExpertReply { RequestId = 7, Dtype = WireDType.Fp8E4M3, Rows = 3, HiddenSize = 4 }, payload.Length, r);
            Assert.Equal(StatusCode.DataLoss, wrongDType.Code);
            var wrongLength = TensorFrameValidator.ValidateReply(new ExpertReply { RequestId = 7, Dtype = reply, Rows = 3, HiddenSize = 4 }, replyBytes - 2, r);
            Assert.Equal(StatusCode.DataLoss, wrongLength.Code);
        }
    }

    [Theory]
    [InlineData("noReplyDType", "reply_dtype")]
    [InlineData("fp8Reply", "reply_dtype")]
    [InlineData("unknownReply", "reply_dtype")]
    [InlineData("short", "payload")]
    [InlineData("elementSized", "payload")]
    [InlineData("shared", "shared_rows")]
    public void BadFp8Frame_IsInvalidArgument_NamingTheField(string scenario, string field)
    {
        var r = Fp8Request();
        int payload = Payload(r).Length;
        bool sharedAllowed = false;
        switch (scenario)
        {
            case "noReplyDType": r.ReplyDtype = WireDType.Unspecified; break;
            case "fp8Reply": r.ReplyDtype = WireDType.Fp8E4M3; break;
            case "unknownReply": r.ReplyDtype = (WireDType)42; break;
            case "short": payload -= 1; break;
            case "elementSized": payload = 3 * 4; break; // a sender that forgot the scales
            case "shared": r.SharedRows = new SharedRows { Offset = 0, Length = (ulong)payload }; payload = 0; sharedAllowed = true; break;
        }
        var result = TensorFrameValidator.ValidateRequest(r, payload, sharedAllowed, View);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains(result.Violations, v => v.Field == field);
    }

    [Theory]
    [InlineData(0f, "has scale 0, not finite and positive")]
    [InlineData(-1f, "has scale -1, not finite and positive")]
    [InlineData(float.NaN, "has scale NaN, not finite and positive")]
    [InlineData(float.PositiveInfinity, "has scale Infinity, not finite and positive")]
    public void BadScale_IsInvalidArgument_NamingRowAndExpert(float scale, string expected)
    {
        var r = Fp8Request();
        var payload = Payload(r);
        BinaryPrimitives.WriteSingleLittleEndian(payload.AsSpan(2 * 8), scale); // row 2 = first row of expert 3
        var result = TensorFrameValidator.CheckFinite(r, payload);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains($"row 2 (expert 3) {expected}", result.Violations.Single().Description);
        Assert.False(WireCodec.TryDecodeFinite(payload, WireDType.Fp8E4M3, 4, new float[12], out int bad));
        Assert.Equal(2, bad);
    }

    [Theory]
    [InlineData(0x7F)]
    [InlineData(0xFF)]
    public void NaNCode_IsInvalidArgument_NamingRowExpertAndElement(int code)
    {
        var r = Fp8Request();
        var payload = Payload(r);
        payload[(1 * 8) + 4 + 2] = (byte)code; // row 1 (expert 0), element 2
        var result = TensorFrameValidator.CheckFinite(r, payload);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains($"row 1 (expert 0) holds the NaN code 0x{code:X2} at element 2", result.Violations.Single().Description);
    }

    [Fact]
    public void RandomFp8Payloads_NeverThrow()
    {
        var rng = new Random(11);
        for (int i = 0; i < 2000; i++)
        {
            var r = Fp8Request((WireDType)rng.Next(-1, 5));
            r.Rows = (uint)rng.Next(0, 5);
            r.HiddenSize = (uint)rng.Next(0, 6);
            var payload = new byte[rng.Next(0, 60)];
            rng.NextBytes(payload);
            var result = TensorFrameValidator.ValidateRequest(r, payload.Length, rng.Next(2) == 0, View);
            if (result.IsOk)
            {
                _ = TensorFrameValidator.CheckFinite(r, payload);
            }
            _ = WireCodec.FirstInvalidRow(payload, WireDType.Fp8E4M3, (int)r.HiddenSize, out _);
        }
    }
}
