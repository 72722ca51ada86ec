using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Distributed.ExpertWorker.Diagnostics;
using Grpc.Core;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// The request body of a data-plane call as gRPC reads it, checked frame by frame as the bytes arrive, so that a broken
/// frame ends the call with INVALID_ARGUMENT or RESOURCE_EXHAUSTED (an <see cref="RpcException"/> thrown from
/// <see cref="ReadAsync"/>, which gRPC turns into the call's status without logging a stack trace) instead of the
/// INTERNAL/UNKNOWN statuses and error logs gRPC gives them itself.
/// <para>gRPC message framing (HTTP/2 DATA, any split): 1 byte compressed flag, 4 bytes big-endian length, the message.
/// Checked: the flag is 0 (the data plane accepts no compression; 1 or anything else is refused); the length is at most
/// the call's limit (0xFFFFFFFF included: RESOURCE_EXHAUSTED before a byte of it is buffered); the body does not end
/// inside a frame (a lying length prefix or a truncated frame); a unary request carries exactly one message; and, where
/// a check is given, the message parses. Bytes are passed through untouched; only frame headers are looked at (a body
/// is skipped by arithmetic), so the cost does not grow with payload size.</para>
/// </summary>
internal sealed class GrpcFrameGuardReader(PipeReader inner, long maxMessageBytes, bool singleMessage, Func<ReadOnlySequence<byte>, string?>? check,
    DataPlaneRejections rejections) : PipeReader
{
    private const int HeaderSize = 5;

    private readonly byte[] _header = new byte[HeaderSize];
    private ReadOnlySequence<byte> _last;
    private long _consumed;     // absolute body offset of _last's first byte
    private long _scanned;      // absolute body offset up to which bytes were scanned
    private SequencePosition _scanFrom; // where the previous buffer ended (= _scanned), while bytes before it are unconsumed
    private long _frameStart;   // absolute offset of the current frame's header
    private long _frameLength;
    private int _headerFill;
    private long _bodyLeft;
    private int _messages;

    /// <summary>Messages completed so far.</summary>
    public int Messages => _messages;

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        var pending = inner.ReadAsync(cancellationToken);
        if (pending.IsCompletedSuccessfully)
        {
            var result = pending.Result;
            Scan(result);
            return new ValueTask<ReadResult>(result);
        }
        return AwaitedAsync(pending);
    }

    private async ValueTask<ReadResult> AwaitedAsync(ValueTask<ReadResult> pending)
    {
        var result = await pending.ConfigureAwait(false);
        Scan(result);
        return result;
    }

    public override bool TryRead(out ReadResult result)
    {
        if (!inner.TryRead(out result))
        {
            return false;
        }
        Scan(result);
        return true;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        _consumed += _last.Slice(_last.Start, consumed).Length;
        _last = default;
        inner.AdvanceTo(consumed, examined);
    }

    public override void CancelPendingRead() => inner.CancelPendingRead();

    public override void Complete(Exception? exception = null) => inner.Complete(exception);

    public override ValueTask CompleteAsync(Exception? exception = null) => inner.CompleteAsync(exception);

    // Scans only the bytes not seen yet. They start where the previous buffer ended (a position that stays valid while
    // bytes before it are unconsumed); seeking by offset instead would walk every segment of a 40 MiB message on each
    // read, quadratic in its size.
    private void Scan(ReadResult result)
    {
        _last = result.Buffer;
        var fresh = _scanned > _consumed ? _last.Slice(_scanFrom) : _last;
        long position = _scanned;
        foreach (var segment in fresh)
        {
            var span = segment.Span;
            int i = 0;
            while (i < span.Length)
            {
                if (_bodyLeft > 0)
                {
                    int take = (int)Math.Min(_bodyLeft, span.Length - i);
                    _bodyLeft -= take;
                    i += take;
                    if (_bodyLeft == 0)
                    {
                        CompleteFrame(result);
                    }
                    continue;
                }
                if (_headerFill == 0)
                {
                    _frameStart = position + i;
                    if (singleMessage && _messages >= 1)
                    {
                        Refuse(result, StatusCode.InvalidArgument, "a unary call carries more than one message");
                    }
                }
                _header[_headerFill++] = span[i++];
                if (_headerFill == HeaderSize)
                {
                    _headerFill = 0;
                    CheckHeader(result);
                }
            }
            position += span.Length;
        }
        _scanned = position;
        _scanFrom = _last.End;
        if (result.IsCompleted)
        {
            if (_headerFill > 0 || _bodyLeft > 0)
            {
                long got = _scanned - _frameStart - HeaderSize;
                Refuse(result, StatusCode.InvalidArgument, _headerFill > 0
                    ? $"the request ended inside a message header ({_headerFill} of {HeaderSize} bytes)"
                    : $"truncated message: its length prefix declares {_frameLength} bytes, the request ended after {got}");
            }
            if (singleMessage && _messages == 0)
            {
                Refuse(result, StatusCode.InvalidArgument, "a unary call ended without a message");
            }
        }
    }

    private void CheckHeader(ReadResult result)
    {
        byte flag = _header[0];
        uint length = BinaryPrimitives.ReadUInt32BigEndian(_header.AsSpan(1));
        if (flag != 0)
        {
            Refuse(result, StatusCode.InvalidArgument, flag == 1
                ? "compressed message: the data plane accepts no compression (grpc-encoding identity only)"
                : $"invalid compressed-flag byte 0x{flag:x2} in a message header");
        }
        if (length > maxMessageBytes)
        {
            Refuse(result, StatusCode.ResourceExhausted, $"message of {length} bytes exceeds this call's limit of {maxMessageBytes} bytes");
        }
        _frameLength = length;
        _bodyLeft = length;
        if (length == 0)
        {
            CompleteFrame(result);
        }
    }

    private void CompleteFrame(ReadResult result)
    {
        _messages++;
        if (check is null)
        {
            return;
        }
        long start = _frameStart - _consumed + HeaderSize;
        if (start >= 0 && start + _frameLength <= _last.Length && check(_last.Slice(start, _frameLength)) is { } problem)
        {
            Refuse(result, StatusCode.InvalidArgument, problem);
        }
    }

    private void Refuse(ReadResult result, StatusCode code, string reason)
    {
        rejections.Report(RejectionKind.MalformedFrame, code, reason);
        // Hand the bytes back before failing so that the body pipe is not left mid-read.
        inner.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        _last = default;
        throw new RpcException(new Status(code, reason));
    }
}
