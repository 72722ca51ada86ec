using System.Buffers;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;

namespace Distributed.Protocol.Tests.Wire;

public class TensorFrameMarshallerTests
{
    private static ExpertRequest Header() => new()
    {
        RequestId = 42, Layer = 3, PlanVersion = 7, Dtype = WireDType.Bf16, HiddenSize = 4, Rows = 3,
        Segments = { new ExpertSegment { Expert = 5, Rows = 2 }, new ExpertSegment { Expert = 9, Rows = 1 } },
    };

    [Fact]
    [Trait("Category", "Unit")]
    public void Frame_IsAStandardProtobufMessage()
    {
        byte[] payload = Enumerable.Range(0, 24).Select(i => (byte)i).ToArray();
        using var frame = new TensorFrame<ExpertRequest>(Header(), payload);
        byte[] wire = TensorFrameMarshaller.ToArray(frame);

        var parsed = ExpertRequest.Parser.ParseFrom(wire);
        Assert.Equal(payload, parsed.Payload.ToByteArray());
        parsed.Payload = ByteString.Empty;
        Assert.Equal(Header(), parsed);
        Assert.Equal(wire.Length, TensorFrameMarshaller.ComputeSize(frame));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void StandardProtobufBytes_ParseIntoAFrame_PayloadAnywhere()
    {
        var message = Header();
        message.Payload = ByteString.CopyFrom(Enumerable.Range(0, 24).Select(i => (byte)(i * 3)).ToArray());
        // Payload first, then the header fields: field order must not matter.
        var payloadOnly = new ExpertRequest { Payload = message.Payload };
        var headerOnly = Header();
        byte[] wire = [.. payloadOnly.ToByteArray(), .. headerOnly.ToByteArray()];

        using var frame = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(wire), ExpertRequest.Parser);
        Assert.Null(frame.Malformed);
        Assert.Equal(headerOnly, frame.Header);
        Assert.Equal(message.Payload.ToByteArray(), frame.Payload.ToArray());
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void MultiSegmentSequence_Parses()
    {
        using var frame = new TensorFrame<ExpertRequest>(Header(), new byte[24]);
        byte[] wire = TensorFrameMarshaller.ToArray(frame);
        var seq = Segments.Split(wire, 5);
        using var parsed = TensorFrameMarshaller.Deserialize(seq, ExpertRequest.Parser);
        Assert.Null(parsed.Malformed);
        Assert.Equal(Header(), parsed.Header);
        Assert.Equal(24, parsed.Payload.Length);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void EveryTruncation_IsMalformedOrShort_NeverThrows()
    {
        using var frame = new TensorFrame<ExpertRequest>(Header(), new byte[24]);
        byte[] wire = TensorFrameMarshaller.ToArray(frame);
        for (int cut = 1; cut < wire.Length; cut++)
        {
            using var parsed = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(wire, 0, cut), ExpertRequest.Parser);
            // A cut on a field boundary is a valid (shorter) message; anything else must be reported, not thrown.
            if (parsed.Malformed is null)
            {
                Assert.NotNull(parsed.Header);
            }
        }
        using var truncatedPayload = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(wire, 0, wire.Length - 1), ExpertRequest.Parser);
        Assert.Contains("declares more bytes", truncatedPayload.Malformed);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void RandomMutations_NeverThrow()
    {
        var rng = new Random(77);
        using var frame = new TensorFrame<ExpertRequest>(Header(), new byte[24]);
        byte[] wire = TensorFrameMarshaller.ToArray(frame);
        for (int iter = 0; iter < 5000; iter++)
        {
            byte[] mutated = (byte[])wire.Clone();
            int flips = rng.Next(1, 4);
            for (int f = 0; f < flips; f++)
            {
                mutated[rng.Next(mutated.Length)] = (byte)rng.Next(256);
            }
            using var parsed = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(mutated), ExpertRequest.Parser);
            Assert.True(parsed.Malformed is not null || parsed.Header is not null);
        }
        for (int iter = 0; iter < 2000; iter++)
        {
            byte[] junk = new byte[rng.Next(0, 64)];
            rng.NextBytes(junk);
            using var parsed = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(junk), ExpertRequest.Parser);
            Assert.True(parsed.Malformed is not null || parsed.Header is not null);
        }
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(new byte[] { 0x00 }, "field number 0")]
    [InlineData(new byte[] { 0x0B }, "wire type 3")]
    [InlineData(new byte[] { 0x7A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F }, "declares more bytes")]
    [InlineData(new byte[] { 0x7A, 0x01, 0x00, 0x7A, 0x01, 0x00 }, "more than once")]
    [InlineData(new byte[] { 0x08, 0x80 }, "truncated varint")]
    public void KnownBadFrames_AreNamed(byte[] wire, string expected)
    {
        using var parsed = TensorFrameMarshaller.Deserialize(new ReadOnlySequence<byte>(wire), ExpertRequest.Parser);
        Assert.Contains(expected, parsed.Malformed);
    }

    private sealed class Segments : ReadOnlySequenceSegment<byte>
    {
        private Segments(ReadOnlyMemory<byte> memory, long index)
        {
            Memory = memory;
            RunningIndex = index;
        }

        public static ReadOnlySequence<byte> Split(byte[] data, int chunk)
        {
            var first = new Segments(data.AsMemory(0, Math.Min(chunk, data.Length)), 0);
            var last = first;
            for (int i = chunk; i < data.Length; i += chunk)
            {
                var next = new Segments(data.AsMemory(i, Math.Min(chunk, data.Length - i)), i);
                last.Next = next;
                last = next;
            }
            return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
        }
    }
}
