using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Hosting;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.ExpertWorker.Tests.Hosting;

/// <summary>
/// The frame guard under gRPC's read pattern (whole messages consumed, partial ones examined), with the body arriving in
/// every possible split: valid streams pass untouched; every broken frame ends the read with its status.
/// </summary>
[Trait("Category", "Unit")]
public sealed class GrpcFrameGuardReaderTests
{
    private readonly DataPlaneRejections _rejections = new(NullLogger<DataPlaneRejections>.Instance, TimeProvider.System);

    private static byte[] Frame(int length, byte flag = 0, byte fill = 1)
    {
        var frame = new byte[5 + length];
        frame[0] = flag;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)length);
        frame.AsSpan(5).Fill(fill);
        return frame;
    }

    private static byte[] Header(uint length, byte flag = 0)
    {
        var header = new byte[5];
        header[0] = flag;
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(1), length);
        return header;
    }

    // Writes the body in chunks of `chunk` bytes, reading as gRPC does; returns the messages read.
    private async Task<List<byte[]>> ReadAllAsync(byte[] body, int chunk, long limit = 1000, bool single = false,
        Func<ReadOnlySequence<byte>, string?>? check = null)
    {
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
        var reader = new GrpcFrameGuardReader(pipe.Reader, limit, single, check, _rejections);
        var writer = Task.Run(async () =>
        {
            for (int i = 0; i < body.Length; i += chunk)
            {
                await pipe.Writer.WriteAsync(body.AsMemory(i, Math.Min(chunk, body.Length - i)));
            }
            await pipe.Writer.CompleteAsync();
        });
        var messages = new List<byte[]>();
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync();
                var buffer = result.Buffer;
                while (buffer.Length >= 5)
                {
                    long length = BinaryPrimitives.ReadUInt32BigEndian(buffer.Slice(1, 4).ToArray());
                    if (buffer.Length < 5 + length)
                    {
                        break;
                    }
                    messages.Add(buffer.Slice(5, length).ToArray());
                    buffer = buffer.Slice(5 + length);
                }
                reader.AdvanceTo(buffer.Start, result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }
        }
        finally
        {
            await reader.CompleteAsync();
            await writer;
        }
        return messages;
    }

    [Fact]
    public async Task ValidStream_PassesUntouched_InEverySplit()
    {
        byte[] body = [.. Frame(7, fill: 1), .. Frame(0), .. Frame(300, fill: 3), .. Frame(1000, fill: 4)];
        foreach (int chunk in new[] { 1, 2, 3, 4, 5, 6, 7, 11, 64, 4096 })
        {
            var messages = await ReadAllAsync(body, chunk);
            Assert.Equal([7, 0, 300, 1000], messages.Select(m => m.Length));
            Assert.All(messages[3], b => Assert.Equal(4, b));
        }
        Assert.Equal(0, _rejections.Total);
    }

    [Fact]
    public async Task LargeMessages_SpanningManySegments_PassUntouched()
    {
        byte[] body = [.. Frame(50_000, fill: 5), .. Frame(3), .. Frame(70_000, fill: 6), .. Frame(1, fill: 7)];
        foreach (int chunk in new[] { 1000, 4095, 16384 })
        {
            var messages = await ReadAllAsync(body, chunk, limit: 100_000);
            Assert.Equal([50_000, 3, 70_000, 1], messages.Select(m => m.Length));
            Assert.All(messages[2], b => Assert.Equal(6, b));
        }
        // A lying prefix after large messages is still found where it is.
        byte[] lying = [.. Frame(50_000), .. Header(60_000), .. new byte[100]];
        var ex = await Assert.ThrowsAsync<RpcException>(() => ReadAllAsync(lying, 4000, limit: 100_000));
        Assert.Contains("declares 60000 bytes, the request ended after 100", ex.Status.Detail);
    }

    public static TheoryData<string, StatusCode, string> Broken => new()
    {
        { "compressed", StatusCode.InvalidArgument, "compressed" },
        { "badFlag", StatusCode.InvalidArgument, "compressed-flag" },
        { "oversize", StatusCode.ResourceExhausted, "exceeds" },
        { "allOnes", StatusCode.ResourceExhausted, "4294967295" },
        { "lyingPrefix", StatusCode.InvalidArgument, "truncated" },
        { "truncatedHeader", StatusCode.InvalidArgument, "inside a message header" },
        { "secondMessage", StatusCode.InvalidArgument, "more than one message" },
        { "empty", StatusCode.InvalidArgument, "without a message" },
        { "unparseable", StatusCode.InvalidArgument, "does not parse" },
    };

    [Theory]
    [MemberData(nameof(Broken))]
    public async Task BrokenFrame_EndsTheReadWithItsStatus_InEverySplit(string kind, StatusCode code, string reason)
    {
        bool single = kind is "secondMessage" or "empty" or "unparseable";
        Func<ReadOnlySequence<byte>, string?>? check = kind == "unparseable" ? m => m.FirstSpan[0] == 0xFF ? "message does not parse" : null : null;
        byte[] body = kind switch
        {
            "compressed" => Frame(10, flag: 1),
            "badFlag" => Frame(10, flag: 7),
            "oversize" => Frame(1001),
            "allOnes" => Header(uint.MaxValue),
            "lyingPrefix" => [.. Header(100), .. new byte[10]],
            "truncatedHeader" => [.. Frame(3), 0, 0],
            "secondMessage" => [.. Frame(3), .. Frame(3)],
            "empty" => [],
            _ => Frame(4, fill: 0xFF),
        };
        foreach (int chunk in new[] { 1, 3, 4096 })
        {
            long before = _rejections.Total;
            var ex = await Assert.ThrowsAsync<RpcException>(() => ReadAllAsync(body, chunk, single: single, check: check));
            Assert.Equal(code, ex.StatusCode);
            Assert.Contains(reason, ex.Status.Detail);
            Assert.Equal(before + 1, _rejections.Total);
        }
    }

    [Fact]
    public async Task OversizePrefix_IsRefused_BeforeItsBodyArrives()
    {
        var pipe = new Pipe();
        var reader = new GrpcFrameGuardReader(pipe.Reader, 1000, false, null, _rejections);
        await pipe.Writer.WriteAsync(Header(uint.MaxValue));
        var ex = await Assert.ThrowsAsync<RpcException>(async () => await reader.ReadAsync());
        Assert.Equal(StatusCode.ResourceExhausted, ex.StatusCode);
    }
}
