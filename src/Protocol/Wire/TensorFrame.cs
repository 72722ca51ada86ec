using Google.Protobuf;

namespace Distributed.Protocol.Wire;

/// <summary>
/// One data-plane message split into its protobuf header (every field except <c>payload</c>, which stays empty in
/// <see cref="Header"/>) and the payload bytes, so that payloads move between pooled buffers and the gRPC pipe without
/// the extra copy and LOH allocation that <see cref="ByteString"/> costs on parse. On the wire the two form one
/// ordinary protobuf message (see <see cref="TensorFrameMarshaller"/>).
/// </summary>
/// <typeparam name="THeader"><c>ExpertRequest</c> or <c>ExpertReply</c>.</typeparam>
public sealed class TensorFrame<THeader> : IDisposable
    where THeader : class, IMessage<THeader>
{
    private IDisposable? _owner;

    /// <summary>Wraps a header and a payload; <paramref name="owner"/> (if any) is disposed with the frame.</summary>
    public TensorFrame(THeader header, ReadOnlyMemory<byte> payload, IDisposable? owner = null)
    {
        Header = header;
        Payload = payload;
        _owner = owner;
    }

    private TensorFrame(string malformed)
    {
        Header = null!;
        Malformed = malformed;
    }

    /// <summary>The message without its payload. Null only when <see cref="Malformed"/> is set.</summary>
    public THeader Header { get; }

    /// <summary>The <c>payload</c> field's bytes (empty on the shared-memory transport).</summary>
    public ReadOnlyMemory<byte> Payload { get; }

    /// <summary>Why an inbound frame could not be parsed, or null. Such a frame has no header.</summary>
    public string? Malformed { get; }

    /// <summary><see cref="System.Diagnostics.Stopwatch"/> timestamp at which the receiving side's transport handed the
    /// frame over (the end of its time on the wire), or 0 when not recorded.</summary>
    public long ReceivedTimestamp { get; set; }

    /// <summary>A frame standing for bytes that do not parse.</summary>
    public static TensorFrame<THeader> CreateMalformed(string reason) => new(reason);

    /// <inheritdoc />
    public void Dispose() => Interlocked.Exchange(ref _owner, null)?.Dispose();
}
