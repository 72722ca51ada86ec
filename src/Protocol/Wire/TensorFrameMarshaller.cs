using System.Buffers;
using Google.Protobuf;
using Grpc.Core;

namespace Distributed.Protocol.Wire;

/// <summary>
/// gRPC marshaller for <see cref="TensorFrame{THeader}"/>.
/// <para>Wire format (a valid protobuf message of the header type): the header's fields as protobuf writes them, then
/// field 15 (<c>payload</c>, wire type 2): the tag byte <c>0x7A</c>, the payload length as a varint, the payload bytes.
/// A standard protobuf peer reads and writes the same bytes.</para>
/// <para>Parsing walks the top-level fields once (tag, wire type, length with every bound checked), copies the
/// payload field straight into a pooled buffer, and parses the remaining bytes as the header. Anything that does not
/// parse becomes a frame with <see cref="TensorFrame{THeader}.Malformed"/> set rather than an exception, so the
/// service can answer with a precise status.</para>
/// </summary>
public static class TensorFrameMarshaller
{
    /// <summary>Field number of <c>payload</c> in both <c>ExpertRequest</c> and <c>ExpertReply</c>.</summary>
    public const int PayloadFieldNumber = 15;

    private const byte PayloadTag = (PayloadFieldNumber << 3) | 2;

    /// <summary>Creates the marshaller for frames with header type <typeparamref name="THeader"/>.</summary>
    public static Marshaller<TensorFrame<THeader>> Create<THeader>(MessageParser<THeader> parser)
        where THeader : class, IMessage<THeader>
        => new(Serialize, ctx => Deserialize(ctx.PayloadAsReadOnlySequence(), parser));

    /// <summary>Bytes the frame occupies on the wire.</summary>
    public static int ComputeSize<THeader>(TensorFrame<THeader> frame)
        where THeader : class, IMessage<THeader>
    {
        int size = frame.Header.CalculateSize();
        if (!frame.Payload.IsEmpty)
        {
            size = checked(size + 1 + CodedOutputStream.ComputeLengthSize(frame.Payload.Length) + frame.Payload.Length);
        }
        return size;
    }

    /// <summary>Writes the frame (header then payload field) to <paramref name="context"/>.</summary>
    public static void Serialize<THeader>(TensorFrame<THeader> frame, SerializationContext context)
        where THeader : class, IMessage<THeader>
    {
        context.SetPayloadLength(ComputeSize(frame));
        var writer = context.GetBufferWriter();
        WriteTo(frame, writer);
        context.Complete();
    }

    /// <summary>Writes the frame to <paramref name="writer"/>.</summary>
    public static void WriteTo<THeader>(TensorFrame<THeader> frame, IBufferWriter<byte> writer)
        where THeader : class, IMessage<THeader>
    {
        if (frame.Malformed is not null)
        {
            throw new InvalidOperationException("a malformed frame cannot be sent");
        }
        frame.Header.WriteTo(writer);
        var payload = frame.Payload.Span;
        if (payload.IsEmpty)
        {
            return;
        }
        Span<byte> prefix = stackalloc byte[11];
        prefix[0] = PayloadTag;
        int n = 1 + WriteVarint(prefix[1..], (uint)payload.Length);
        writer.Write(prefix[..n]);
        while (!payload.IsEmpty)
        {
            var span = writer.GetSpan(Math.Min(payload.Length, 1 << 20));
            int chunk = Math.Min(span.Length, payload.Length);
            payload[..chunk].CopyTo(span);
            writer.Advance(chunk);
            payload = payload[chunk..];
        }
    }

    /// <summary>Serializes the frame into one array (tests, benchmarks).</summary>
    public static byte[] ToArray<THeader>(TensorFrame<THeader> frame)
        where THeader : class, IMessage<THeader>
    {
        var writer = new ArrayBufferWriter<byte>(ComputeSize(frame));
        WriteTo(frame, writer);
        return writer.WrittenSpan.ToArray();
    }

    /// <summary>Parses a frame; never throws on bad input (see <see cref="TensorFrame{THeader}.Malformed"/>).</summary>
    public static TensorFrame<THeader> Deserialize<THeader>(ReadOnlySequence<byte> data, MessageParser<THeader> parser)
        where THeader : class, IMessage<THeader>
    {
        var reader = new SequenceReader<byte>(data);
        long payloadFieldStart = -1, payloadStart = -1, payloadLength = 0;
        while (!reader.End)
        {
            long fieldStart = reader.Consumed;
            if (!TryReadVarint(ref reader, out ulong tag) || tag > uint.MaxValue)
            {
                return TensorFrame<THeader>.CreateMalformed($"truncated or invalid field tag at byte {fieldStart}");
            }
            int field = (int)(tag >> 3);
            int wireType = (int)(tag & 7);
            if (field == 0)
            {
                return TensorFrame<THeader>.CreateMalformed($"field number 0 at byte {fieldStart}");
            }
            switch (wireType)
            {
                case 0:
                    if (!TryReadVarint(ref reader, out _))
                    {
                        return TensorFrame<THeader>.CreateMalformed($"truncated varint of field {field} at byte {fieldStart}");
                    }
                    break;
                case 1:
                case 5:
                    int fixedSize = wireType == 1 ? 8 : 4;
                    if (reader.Remaining < fixedSize)
                    {
                        return TensorFrame<THeader>.CreateMalformed($"truncated fixed-size field {field} at byte {fieldStart}");
                    }
                    reader.Advance(fixedSize);
                    break;
                case 2:
                    if (!TryReadVarint(ref reader, out ulong length) || length > (ulong)reader.Remaining)
                    {
                        return TensorFrame<THeader>.CreateMalformed(
                            $"field {field} at byte {fieldStart} declares more bytes than the frame holds ({reader.Remaining} left)");
                    }
                    if (field == PayloadFieldNumber)
                    {
                        if (payloadFieldStart >= 0)
                        {
                            return TensorFrame<THeader>.CreateMalformed("payload field appears more than once");
                        }
                        payloadFieldStart = fieldStart;
                        payloadStart = reader.Consumed;
                        payloadLength = (long)length;
                    }
                    reader.Advance((long)length);
                    break;
                default:
                    return TensorFrame<THeader>.CreateMalformed($"unsupported wire type {wireType} of field {field} at byte {fieldStart}");
            }
        }
        if (payloadFieldStart >= 0 && payloadLength > int.MaxValue)
        {
            return TensorFrame<THeader>.CreateMalformed($"payload of {payloadLength} bytes exceeds 2 GiB");
        }

        THeader header;
        try
        {
            if (payloadFieldStart < 0)
            {
                header = parser.ParseFrom(data);
            }
            else
            {
                long payloadEnd = payloadStart + payloadLength;
                var before = data.Slice(0, payloadFieldStart);
                var after = data.Slice(payloadEnd);
                if (after.IsEmpty)
                {
                    header = parser.ParseFrom(before);
                }
                else
                {
                    var joined = new byte[checked((int)(before.Length + after.Length))];
                    before.CopyTo(joined);
                    after.CopyTo(joined.AsSpan((int)before.Length));
                    header = parser.ParseFrom(joined);
                }
            }
        }
        catch (InvalidProtocolBufferException ex)
        {
            return TensorFrame<THeader>.CreateMalformed($"header does not parse: {ex.Message}");
        }

        if (payloadFieldStart < 0 || payloadLength == 0)
        {
            return new TensorFrame<THeader>(header, ReadOnlyMemory<byte>.Empty);
        }
        var buffer = PooledBuffer.Rent((int)payloadLength);
        data.Slice(payloadStart, payloadLength).CopyTo(buffer.Span);
        return new TensorFrame<THeader>(header, buffer.Memory, buffer);
    }

    private static bool TryReadVarint(ref SequenceReader<byte> reader, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (!reader.TryRead(out byte b))
            {
                return false;
            }
            if (shift == 63 && b > 1)
            {
                return false;
            }
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return true;
            }
        }
        return false;
    }

    private static int WriteVarint(Span<byte> dst, uint value)
    {
        int i = 0;
        while (value >= 0x80)
        {
            dst[i++] = (byte)(value | 0x80);
            value >>= 7;
        }
        dst[i++] = (byte)value;
        return i;
    }
}
