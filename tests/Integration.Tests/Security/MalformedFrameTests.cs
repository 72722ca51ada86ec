using System.Buffers.Binary;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.Core;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// Every kind of malformed gRPC frame, sent with the right credential as raw HTTP/2 to each kind of method, gets
/// INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never UNKNOWN or INTERNAL), at most one log line per kind per 10 s and
/// no stack trace, and the worker answers a valid request right after. A request id already in flight on a stream ends
/// that stream with INVALID_ARGUMENT instead of being answered twice.
/// </summary>
[Trait("Category", "Integration")]
public sealed class MalformedFrameTests : IClassFixture<HostileWorker>
{
    private static readonly string DispatchOnce = $"/{ExpertWorkerMethods.ServiceName}/DispatchOnce";
    private static readonly string Dispatch = $"/{ExpertWorkerMethods.ServiceName}/Dispatch";
    private static readonly string Hello = $"/{ExpertWorkerMethods.ServiceName}/Hello";
    private const string HealthCheck = "/grpc.health.v1.Health/Check";

    private readonly HostileWorker _worker;

    public MalformedFrameTests(HostileWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _worker.Log.Output = output;
    }

    private static byte[] Frame(byte[] message, byte flag = 0)
    {
        var frame = new byte[5 + message.Length];
        frame[0] = flag;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)message.Length);
        message.CopyTo(frame, 5);
        return frame;
    }

    private static byte[] Prefix(uint length, byte flag = 0)
    {
        var header = new byte[5];
        header[0] = flag;
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(1), length);
        return header;
    }

    private byte[] ValidMessage(string method)
    {
        if (method == Hello)
        {
            return new HelloRequest { ProtocolMajor = 1, ModelFingerprint = _worker.Model.Fingerprint, CoordinatorId = "raw" }.ToByteArray();
        }
        if (method == HealthCheck)
        {
            return [];
        }
        var (h, p) = _worker.Valid();
        return TensorFrameMarshaller.ToArray(new TensorFrame<ExpertRequest>(h, p));
    }

    public static TheoryData<string, string, StatusCode> Cases()
    {
        var data = new TheoryData<string, string, StatusCode>();
        foreach (string method in new[] { DispatchOnce, Dispatch, Hello, HealthCheck })
        {
            data.Add(method, "lyingPrefix", StatusCode.InvalidArgument);
            data.Add(method, "allOnesPrefix", StatusCode.ResourceExhausted);
            data.Add(method, "gzipGarbage", StatusCode.InvalidArgument);
            data.Add(method, "compressedFlagWithoutEncoding", StatusCode.InvalidArgument);
            data.Add(method, "invalidFlag", StatusCode.InvalidArgument);
            data.Add(method, "oversize", StatusCode.ResourceExhausted);
            data.Add(method, "truncatedHeader", StatusCode.InvalidArgument);
            data.Add(method, "garbageMessage", StatusCode.InvalidArgument);
            if (method != Dispatch)
            {
                data.Add(method, "twoMessages", StatusCode.InvalidArgument);
                data.Add(method, "noMessage", StatusCode.InvalidArgument);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task MalformedFrame_GetsItsStatus_OneLogLineAtMost_NoStackTrace_WorkerServesOn(string method, string kind, StatusCode expected)
    {
        byte[] valid = ValidMessage(method);
        int limit = method == Hello || method == HealthCheck ? 64 << 10 : _worker.MaxMessageBytes;
        string? encoding = null;
        byte[] body = kind switch
        {
            "lyingPrefix" => [.. Prefix((uint)valid.Length + 1000), .. valid],
            "allOnesPrefix" => [.. Prefix(uint.MaxValue), .. valid],
            "gzipGarbage" => Frame([0x1F, 0x8B, 0xDE, 0xAD, 0xBE, 0xEF], flag: 1),
            "compressedFlagWithoutEncoding" => Frame(valid, flag: 1),
            "invalidFlag" => Frame(valid, flag: 0x80),
            "oversize" => [.. Prefix((uint)limit + 1), .. new byte[limit + 1]],
            "truncatedHeader" => [0, 0, 0],
            "garbageMessage" => Frame([0x0B, 0x01, 0xFF]),
            "twoMessages" => [.. Frame(valid), .. Frame(valid)],
            _ => [],
        };
        if (kind == "gzipGarbage")
        {
            encoding = "gzip";
        }
        int linesBefore = _worker.Lines.Count;
        var (code, message, _) = await _worker.RawAsync(method, body, encoding: encoding);
        Assert.True(code == expected, $"{kind} on {method}: {code} '{message}', expected {expected}");
        Assert.True(_worker.RefusalLines("MalformedFrame", linesBefore) <= 1);
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }

    /// <summary>The check the suite relies on recognises what gRPC used to log for these frames.</summary>
    [Theory]
    [InlineData("fail: Grpc.AspNetCore.Server.ServerCallHandler[6] Error when executing service method 'DispatchOnce'. System.IO.IOException: Message too large: 4294967295    at Grpc.AspNetCore.Server.Internal.PipeExtensions.ReadSingleMessageAsync[T](PipeReader input, HttpContextServerCallContext serverCallContext)", true)]
    [InlineData("      at Distributed.ExpertWorker.Services.ExpertComputeService.Dispatch(IAsyncStreamReader`1 requestStream)", true)]
    [InlineData("warn: Distributed.ExpertWorker.Diagnostics.DataPlaneRejections[3024] Data plane refused a call (MalformedFrame, InvalidArgument): truncated message (0 more of this kind not logged since the last line)", false)]
    public void StackTraceDetector_RecognisesStackFrames(string line, bool stack) => Assert.Equal(stack, HostileWorker.LooksLikeStackTrace(line));

    [Fact]
    public async Task BurstOfMalformedFrames_IsLoggedAsOneLinePerKind()
    {
        int linesBefore = _worker.Lines.Count;
        for (int i = 0; i < 30; i++)
        {
            var (code, _, _) = await _worker.RawAsync(DispatchOnce, [.. Prefix(1000), 1, 2, 3]);
            Assert.Equal(StatusCode.InvalidArgument, code);
        }
        // Two lines at most: the burst may straddle the end of a 10 s window.
        Assert.InRange(_worker.RefusalLines("MalformedFrame", linesBefore), 0, 2);
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }

    /// <summary>Fifty requests with one id in one write: while the first is computed the next arrive, and the stream ends
    /// with INVALID_ARGUMENT naming the id instead of answering it twice.</summary>
    [Fact]
    public async Task DuplicateInFlightRequestId_EndsTheStream_InsteadOfAnsweringTwice()
    {
        var (h, p) = _worker.Valid(rows: 64, id: 42);
        byte[] one = Frame(TensorFrameMarshaller.ToArray(new TensorFrame<ExpertRequest>(h, p)));
        byte[] body = [.. Enumerable.Repeat(one, 50).SelectMany(b => b)];
        var (code, message, _) = await _worker.RawAsync(Dispatch, body);
        Assert.Equal(StatusCode.InvalidArgument, code);
        Assert.Contains("request_id 42 is already in flight", message);
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }
}
