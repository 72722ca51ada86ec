using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;

namespace Distributed.Protocol.Tests.Wire;

public class TensorFrameValidatorTests
{
    internal sealed class Shard : IShardView
    {
        public ModelDescriptor Model { get; } = new("abc", HiddenSize: 4, IntermediateSize: 8, NumLayers: 4, NumExperts: 8, MoeLayers: [1, 3]);
        public ulong PlanVersion => 5;
        public int MaxRowsPerDispatch => 16;
        public bool Holds(int layer, int expert) => (layer == 1 && expert < 4) || layer == 3;
    }

    private static readonly Shard View = new();

    private static ExpertRequest Valid(uint rows0 = 2, uint rows1 = 1) => new()
    {
        RequestId = 1, Layer = 1, PlanVersion = 5, Dtype = WireDType.Bf16, HiddenSize = 4, Rows = rows0 + rows1,
        Segments = { new ExpertSegment { Expert = 0, Rows = rows0 }, new ExpertSegment { Expert = 3, Rows = rows1 } },
    };

    private static int Bytes(ExpertRequest r) => (int)(r.Rows * r.HiddenSize * (r.Dtype == WireDType.Fp32 ? 4u : 2u));

    [Fact]
    [Trait("Category", "Unit")]
    public void ValidRequest_IsOk()
    {
        var r = Valid();
        Assert.True(TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View).IsOk);
        r.Dtype = WireDType.Fp32;
        Assert.True(TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View).IsOk);
    }

    public static TheoryData<string, string> InvalidCases => new()
    {
        { "dtype0", "dtype" }, { "dtype99", "dtype" }, { "hidden", "hidden_size" }, { "layerDense", "layer" },
        { "layerHuge", "layer" }, { "noSegments", "segments" }, { "expertRange", "segments[1].expert" },
        { "duplicate", "segments[1].expert" }, { "emptySegment", "segments[0].rows" }, { "rowSum", "rows" },
        { "payloadShort", "payload" }, { "payloadLong", "payload" }, { "sharedNotNegotiated", "shared_rows" },
        { "tooManySegments", "segments" },
    };

    [Theory]
    [Trait("Category", "Unit")]
    [MemberData(nameof(InvalidCases))]
    public void InvalidField_IsInvalidArgument_NamingTheField(string scenario, string field)
    {
        var r = Valid();
        int payload = Bytes(r);
        switch (scenario)
        {
            case "dtype0": r.Dtype = WireDType.Unspecified; break;
            case "dtype99": r.Dtype = (WireDType)99; break;
            case "hidden": r.HiddenSize = 5; break;
            case "layerDense": r.Layer = 2; break;
            case "layerHuge": r.Layer = uint.MaxValue; break;
            case "noSegments": r.Segments.Clear(); break;
            case "expertRange": r.Segments[1].Expert = 8; break;
            case "duplicate": r.Segments[1].Expert = 0; break;
            case "emptySegment": r.Segments[0].Rows = 0; r.Rows = 1; payload = Bytes(r); break;
            case "rowSum": r.Rows = 4; payload = Bytes(r); break;
            case "payloadShort": payload -= 1; break;
            case "payloadLong": payload += 2; break;
            case "sharedNotNegotiated": r.SharedRows = new SharedRows { Offset = 0, Length = (ulong)payload }; payload = 0; break;
            case "tooManySegments":
                r.Segments.Clear();
                for (int i = 0; i < 9; i++)
                {
                    r.Segments.Add(new ExpertSegment { Expert = (uint)i, Rows = 1 });
                }
                break;
        }
        var result = TensorFrameValidator.ValidateRequest(r, payload, false, View);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains(result.Violations, v => v.Field == field);
        Assert.Contains(field, result.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void HugeRowCounts_DoNotOverflow()
    {
        var r = Valid();
        r.Segments[0].Rows = uint.MaxValue;
        r.Segments[1].Rows = uint.MaxValue;
        r.Rows = uint.MaxValue;
        var result = TensorFrameValidator.ValidateRequest(r, 0, false, View);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains(result.Violations, v => v.Field == "rows");
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void TooManyRows_IsResourceExhausted()
    {
        var r = Valid(rows0: 10, rows1: 7);
        var result = TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View);
        Assert.Equal(StatusCode.ResourceExhausted, result.Code);
        Assert.Contains("MaxRowsPerDispatch 16", result.Message);
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(4ul, "stale")]
    [InlineData(6ul, "ahead")]
    public void OtherPlanVersion_IsFailedPrecondition(ulong version, string word)
    {
        var r = Valid();
        r.PlanVersion = version;
        var result = TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View);
        Assert.Equal(StatusCode.FailedPrecondition, result.Code);
        Assert.Contains(word, result.Message);
        Assert.Equal("plan_version", result.Violations.Single().Field);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void ExpertNotHeld_IsFailedPrecondition()
    {
        var r = Valid();
        r.Segments[1].Expert = 6;
        var result = TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View);
        Assert.Equal(StatusCode.FailedPrecondition, result.Code);
        Assert.Contains("expert 6 of layer 1 is not held", result.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void SharedRows_WhenNegotiated_CheckLength()
    {
        var r = Valid();
        r.SharedRows = new SharedRows { Offset = 64, Length = (ulong)Bytes(r) };
        Assert.True(TensorFrameValidator.ValidateRequest(r, 0, true, View).IsOk);
        r.SharedRows.Length += 2;
        var bad = TensorFrameValidator.ValidateRequest(r, 0, true, View);
        Assert.Contains(bad.Violations, v => v.Field == "shared_rows.length");
        r.SharedRows.Length -= 2;
        bad = TensorFrameValidator.ValidateRequest(r, 10, true, View);
        Assert.Contains(bad.Violations, v => v.Field == "payload");
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void NonFiniteRow_IsInvalidArgument_NamingRowAndExpert()
    {
        var r = Valid();
        r.Dtype = WireDType.Fp32;
        var rows = new float[12];
        rows[9] = float.NaN; // row 2 = first row of expert 3
        var bytes = new byte[48];
        WireCodec.Encode(rows, WireDType.Fp32, bytes);
        var result = TensorFrameValidator.CheckFinite(r, bytes);
        Assert.Equal(StatusCode.InvalidArgument, result.Code);
        Assert.Contains("row 2 (expert 3)", result.Message);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void RpcException_CarriesBadRequestDetails()
    {
        var r = Valid();
        r.HiddenSize = 9;
        var ex = TensorFrameValidator.ValidateRequest(r, Bytes(r), false, View).ToRpcException();
        Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
        var status = ex.GetRpcStatus();
        Assert.NotNull(status);
        var bad = status!.GetDetail<Google.Rpc.BadRequest>();
        Assert.Contains(bad.FieldViolations, v => v.Field == "hidden_size");
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Reply_IsCheckedAgainstItsRequest()
    {
        var request = Valid();
        var reply = new ExpertReply { RequestId = 1, Dtype = WireDType.Bf16, Rows = 3, HiddenSize = 4 };
        Assert.True(TensorFrameValidator.ValidateReply(reply, 24, request).IsOk);
        Assert.Equal(StatusCode.DataLoss, TensorFrameValidator.ValidateReply(reply, 23, request).Code);
        reply.Rows = 2;
        Assert.Equal(StatusCode.DataLoss, TensorFrameValidator.ValidateReply(reply, 24, request).Code);
        reply.Status = new ReplyStatus { Code = (int)StatusCode.FailedPrecondition, Message = "stale" };
        Assert.Equal(StatusCode.FailedPrecondition, TensorFrameValidator.ValidateReply(reply, 0, request).Code);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void RandomHeaders_NeverThrow()
    {
        var rng = new Random(5);
        for (int i = 0; i < 3000; i++)
        {
            var r = new ExpertRequest
            {
                RequestId = (ulong)rng.NextInt64(), Layer = (uint)rng.Next(-2, 6), PlanVersion = (ulong)rng.Next(3, 8),
                Dtype = (WireDType)rng.Next(-1, 4), HiddenSize = (uint)rng.Next(0, 6), Rows = (uint)rng.Next(0, 40),
            };
            int segs = rng.Next(0, 5);
            for (int s = 0; s < segs; s++)
            {
                r.Segments.Add(new ExpertSegment { Expert = (uint)rng.Next(-1, 10), Rows = (uint)rng.Next(-1, 20) });
            }
            var result = TensorFrameValidator.ValidateRequest(r, rng.Next(0, 400), rng.Next(2) == 0, View);
            Assert.True(result.IsOk || result.Message.Length > 0);
        }
    }
}
