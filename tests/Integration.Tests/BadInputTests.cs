using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.Core;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// Every kind of bad input against a real worker process gets its precise gRPC status, and the worker keeps serving
/// (a valid request right after each one succeeds, on the same stream where one is used).
/// </summary>
[Trait("Category", "Integration")]
public sealed class BadInputTests : IClassFixture<StaticWorker>
{
    private static readonly Marshaller<byte[]> Raw = Marshallers.Create(b => b, b => b);
    private static readonly Method<byte[], byte[]> RawOnce = new(MethodType.Unary, ExpertWorkerMethods.ServiceName, "DispatchOnce", Raw, Raw);
    private static readonly Method<byte[], byte[]> RawStream = new(MethodType.DuplexStreaming, ExpertWorkerMethods.ServiceName, "Dispatch", Raw, Raw);
    private readonly StaticWorker _worker;

    public BadInputTests(StaticWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _worker.Log.Output = output;
    }

    public static TheoryData<string, StatusCode, string> HeaderCases => new()
    {
        { "rowSum", StatusCode.InvalidArgument, "rows" },
        { "payloadShort", StatusCode.InvalidArgument, "payload" },
        { "nan", StatusCode.InvalidArgument, "payload" },
        { "inf", StatusCode.InvalidArgument, "payload" },
        { "denseLayer", StatusCode.InvalidArgument, "layer" },
        { "hugeLayer", StatusCode.InvalidArgument, "layer" },
        { "unknownExpert", StatusCode.InvalidArgument, "segments[0].expert" },
        { "badDtype", StatusCode.InvalidArgument, "dtype" },
        { "wrongHidden", StatusCode.InvalidArgument, "hidden_size" },
        { "notHeld", StatusCode.FailedPrecondition, "segments[0].expert" },
        { "stalePlan", StatusCode.FailedPrecondition, "plan_version" },
        { "tooManyRows", StatusCode.ResourceExhausted, "rows" },
        { "fp8ZeroScale", StatusCode.InvalidArgument, "payload" },
        { "fp8NaNScale", StatusCode.InvalidArgument, "payload" },
        { "fp8NaNCode", StatusCode.InvalidArgument, "payload" },
        { "fp8NoReplyDType", StatusCode.InvalidArgument, "reply_dtype" },
        { "fp8ElementSized", StatusCode.InvalidArgument, "payload" },
    };

    private (ExpertRequest, byte[]) Make(string scenario)
    {
        var (h, p) = _worker.Valid();
        switch (scenario)
        {
            case "rowSum": h.Rows = 3; break;
            case "payloadShort": p = p[..^4]; break;
            case "nan": BitConverter.GetBytes(float.NaN).CopyTo(p, 4 * (_worker.Model.HiddenSize + 5)); break;
            case "inf": BitConverter.GetBytes(float.NegativeInfinity).CopyTo(p, 0); break;
            case "denseLayer": h.Layer = 2; break;
            case "hugeLayer": h.Layer = 4_000_000; break;
            case "unknownExpert": h.Segments[0].Expert = 128; break;
            case "badDtype": h.Dtype = (WireDType)7; break;
            case "wrongHidden": h.HiddenSize = 65; break;
            case "notHeld": h.Segments[0].Expert = 100; break;
            case "stalePlan": h.PlanVersion = StaticWorker.PlanVersion - 1; break;
            case "tooManyRows": (h, p) = _worker.Valid(rows: StaticWorker.MaxRows + 1); break;
            case "fp8ZeroScale":
                (h, p) = _worker.Valid(WireDType.Fp8E4M3);
                BitConverter.GetBytes(0f).CopyTo(p, _worker.Model.HiddenSize + 4); // row 1's scale
                break;
            case "fp8NaNScale":
                (h, p) = _worker.Valid(WireDType.Fp8E4M3);
                BitConverter.GetBytes(float.NaN).CopyTo(p, 0);
                break;
            case "fp8NaNCode":
                (h, p) = _worker.Valid(WireDType.Fp8E4M3);
                p[4 + 7] = 0xFF;
                break;
            case "fp8NoReplyDType":
                (h, p) = _worker.Valid(WireDType.Fp8E4M3);
                h.ReplyDtype = WireDType.Unspecified;
                break;
            case "fp8ElementSized":
                (h, p) = _worker.Valid(WireDType.Fp8E4M3);
                p = p[..(2 * _worker.Model.HiddenSize)];
                break;
        }
        return (h, p);
    }

    [Theory]
    [MemberData(nameof(HeaderCases))]
    public async Task BadRequest_Unary_GetsPreciseStatus_WorkerSurvives(string scenario, StatusCode code, string field)
    {
        var (h, p) = Make(scenario);
        var ex = await Assert.ThrowsAsync<RpcException>(() => _worker.CallOnceAsync(h, p));
        Assert.Equal(code, ex.StatusCode);
        Assert.Contains(field, ex.Status.Detail);
        var details = ex.GetRpcStatus();
        Assert.NotNull(details);
        if (code == StatusCode.InvalidArgument)
        {
            Assert.Contains(details!.GetDetail<Google.Rpc.BadRequest>().FieldViolations, v => v.Field == field);
        }
        await AssertAliveAsync();
    }

    [Theory]
    [MemberData(nameof(HeaderCases))]
    public async Task BadRequest_OnStream_GetsStatusReply_StreamGoesOn(string scenario, StatusCode code, string field)
    {
        var invoker = _worker.Channel.CreateCallInvoker();
        using var call = invoker.AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(_worker.Headers(), DateTime.UtcNow.AddSeconds(30)));
        var (h, p) = Make(scenario);
        h.RequestId = 11;
        await call.RequestStream.WriteAsync(new TensorFrame<ExpertRequest>(h, p));
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        using (var bad = call.ResponseStream.Current)
        {
            Assert.Equal(11ul, bad.Header.RequestId);
            Assert.Equal((int)code, bad.Header.Status.Code);
            Assert.Contains(bad.Header.Status.Violations, v => v.Field == field);
        }
        var (vh, vp) = _worker.Valid();
        vh.RequestId = 12;
        await call.RequestStream.WriteAsync(new TensorFrame<ExpertRequest>(vh, vp));
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        using (var good = call.ResponseStream.Current)
        {
            Assert.Equal(12ul, good.Header.RequestId);
            Assert.Equal(0, good.Header.Status.Code);
            Assert.Equal(vp.Length, good.Payload.Length);
        }
        await call.RequestStream.CompleteAsync();
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("truncated")]
    [InlineData("wireType")]
    public async Task MalformedFrame_IsInvalidArgument_OnUnaryAndStream(string kind)
    {
        var (h, p) = _worker.Valid();
        byte[] good = TensorFrameMarshaller.ToArray(new TensorFrame<ExpertRequest>(h, p));
        byte[] bad = kind switch
        {
            "garbage" => [0x08, 0x80, 0x80],
            "truncated" => good[..^10],
            _ => [0x0B, 0x01],
        };
        var invoker = _worker.Channel.CreateCallInvoker();
        var ex = await Assert.ThrowsAsync<RpcException>(async () =>
            await invoker.AsyncUnaryCall(RawOnce, null, new CallOptions(_worker.Headers(), DateTime.UtcNow.AddSeconds(20)), bad));
        Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
        Assert.Contains("malformed", ex.Status.Detail);

        using var call = invoker.AsyncDuplexStreamingCall(RawStream, null, new CallOptions(_worker.Headers(), DateTime.UtcNow.AddSeconds(20)));
        await call.RequestStream.WriteAsync(bad);
        var streamEx = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, streamEx.StatusCode);
        await AssertAliveAsync();
    }

    [Fact]
    public async Task OversizedMessage_IsResourceExhausted()
    {
        var (h, _) = _worker.Valid();
        var huge = new byte[4 << 20];
        var ex = await Assert.ThrowsAsync<RpcException>(() => _worker.CallOnceAsync(h, huge));
        Assert.Equal(StatusCode.ResourceExhausted, ex.StatusCode);
        await AssertAliveAsync();
    }

    [Fact]
    public async Task FingerprintMismatch_IsFailedPrecondition_OnHelloAndStream()
    {
        var invoker = _worker.Channel.CreateCallInvoker();
        var hello = new HelloRequest { ProtocolMajor = ProtocolVersion.Major, ModelFingerprint = new string('0', 64), CoordinatorId = "test" };
        var ex = await Assert.ThrowsAsync<RpcException>(async () => await invoker.AsyncUnaryCall(ExpertWorkerMethods.Hello, null, new CallOptions(TestCredential.Headers()), hello));
        Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
        Assert.Contains("model", ex.Status.Detail);

        var (h, p) = _worker.Valid();
        var streamEx = await Assert.ThrowsAsync<RpcException>(() => _worker.CallOnceAsync(h, p, _worker.Headers(fingerprint: "beef")));
        Assert.Equal(StatusCode.FailedPrecondition, streamEx.StatusCode);

        using var call = invoker.AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(_worker.Headers(fingerprint: "beef")));
        var s = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.FailedPrecondition, s.StatusCode);
        await AssertAliveAsync();
    }

    [Fact]
    public async Task ProtocolMajorMismatch_IsFailedPrecondition()
    {
        var invoker = _worker.Channel.CreateCallInvoker();
        var hello = new HelloRequest { ProtocolMajor = 99, ModelFingerprint = _worker.Model.Fingerprint };
        var ex = await Assert.ThrowsAsync<RpcException>(async () => await invoker.AsyncUnaryCall(ExpertWorkerMethods.Hello, null, new CallOptions(TestCredential.Headers()), hello));
        Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
        var (h, p) = _worker.Valid();
        var callEx = await Assert.ThrowsAsync<RpcException>(() => _worker.CallOnceAsync(h, p, _worker.Headers(major: "2")));
        Assert.Equal(StatusCode.FailedPrecondition, callEx.StatusCode);
    }

    [Fact]
    public async Task GeneratedProtobufClient_InteroperatesWithTheCustomMarshaller()
    {
        var client = new Protocol.Grpc.ExpertWorker.ExpertWorkerClient(_worker.Channel);
        var (h, p) = _worker.Valid(WireDType.Bf16, rows: 3);
        h.Payload = ByteString.CopyFrom(p);
        var reply = await client.DispatchOnceAsync(h, _worker.Headers());
        Assert.Equal(0, reply.Status.Code);
        Assert.Equal(p.Length, reply.Payload.Length);
        var hello = await client.HelloAsync(new HelloRequest { ProtocolMajor = 1, ModelFingerprint = _worker.Model.Fingerprint }, TestCredential.Headers());
        Assert.Equal(StaticWorker.PlanVersion, hello.PlanVersion);
        Assert.Equal([1u, 3u, 5u], hello.Shards.Select(s => s.Layer));
        Assert.Equal(64, hello.Shards[0].Experts.Count);
    }

    private async Task AssertAliveAsync()
    {
        Assert.False(_worker.Process.HasExited, "the worker process exited");
        var (h, p) = _worker.Valid();
        using var reply = await _worker.CallOnceAsync(h, p);
        Assert.Equal(0, reply.Header.Status.Code);
        Assert.Equal(p.Length, reply.Payload.Length);
    }

    /// <summary>
    /// An FP8 request is answered in its reply dtype (bf16 here), and its rows are what the fp32 request of the same
    /// decoded values gives, rounded to bf16 (the worker decodes code × scale to fp32 before the experts).
    /// </summary>
    [Fact]
    public async Task Fp8Request_IsAnsweredInItsReplyDType_AsTheDecodedRowsInFp32()
    {
        var (h, p) = _worker.Valid(WireDType.Fp8E4M3, rows: 3);
        int hidden = _worker.Model.HiddenSize;
        using var reply = await _worker.CallOnceAsync(h, p);
        Assert.Equal(WireDType.Bf16, reply.Header.Dtype);
        Assert.Equal(3 * hidden * 2, reply.Payload.Length);
        var decoded = new float[3 * hidden];
        WireCodec.DecodeRows(p, hidden, WireDType.Fp8E4M3, decoded);
        var exact = new byte[decoded.Length * 4];
        WireCodec.Encode(decoded, WireDType.Fp32, exact);
        var (fh, _) = _worker.Valid(WireDType.Fp32, rows: 3);
        using var fp32 = await _worker.CallOnceAsync(fh, exact);
        var expected = new float[decoded.Length];
        WireCodec.Decode(fp32.Payload.Span, WireDType.Fp32, expected);
        var bf16 = new byte[expected.Length * 2];
        WireCodec.Encode(expected, WireDType.Bf16, bf16);
        Assert.Equal(bf16, reply.Payload.ToArray());
    }
}
