using Google.Protobuf;

namespace Distributed.Protocol.Wire;

/// <summary>
/// One side of a session's ring doorbell (<see cref="RingControl"/>): sends <typeparamref name="TSend"/> headers
/// through one queue and receives <typeparamref name="TReceive"/> headers from the other on a dedicated reader thread
/// (a brief spin, then a futex sleep; no polling). The coordinator sends requests and receives replies, the worker the
/// reverse. Every received message is copied out of its slot and parsed before <c>received</c> sees it; a slot that
/// breaks the protocol (impossible length, unparsable header) stops the reader and is reported once through
/// <c>failed</c>, and the owner ends the session's stream. Neither callback may throw.
/// </summary>
/// <typeparam name="TSend">What this side writes (<c>ExpertRequest</c> on the coordinator).</typeparam>
/// <typeparam name="TReceive">What this side reads (<c>ExpertReply</c> on the coordinator).</typeparam>
public sealed class RingDoorbellEndpoint<TSend, TReceive> : IDisposable
    where TSend : IMessage<TSend>
    where TReceive : IMessage<TReceive>
{
    private readonly RingQueue _send;
    private readonly RingQueue _receive;
    private readonly MessageParser<TReceive> _parser;
    private readonly Action<TReceive> _received;
    private readonly Action<RingProtocolException> _failed;
    private readonly long _spinTicks;
    private readonly Lock _sendLock = new();
    private readonly Thread _reader;
    private bool _disposed;

    /// <summary>Opens both queues of <paramref name="ring"/>; <see cref="Start"/> starts the reader thread (so that the
    /// callbacks may use the endpoint once it is assigned).</summary>
    /// <param name="ring">A ring whose control area the coordinator initialized (<see cref="RingControl.Initialize"/>).</param>
    /// <param name="coordinator">True on the coordinator (sends on the request queue), false on the worker.</param>
    /// <param name="parser">Parses a received header.</param>
    /// <param name="spin">How long the reader spins before it sleeps on the doorbell (zero: sleep at once).</param>
    /// <param name="received">Called on the reader thread with each received header, in order.</param>
    /// <param name="failed">Called once when the peer broke the protocol; nothing is received afterwards.</param>
    /// <param name="name">The reader thread's name.</param>
    /// <param name="positions">Where an earlier endpoint of this side of the session left off (<see cref="Positions"/>
    /// after its <see cref="Dispose"/>); default for a new session.</param>
    /// <exception cref="SharedRingException">The ring is closing or too small for the doorbell.</exception>
    public RingDoorbellEndpoint(SharedRing ring, bool coordinator, MessageParser<TReceive> parser, TimeSpan spin, Action<TReceive> received,
        Action<RingProtocolException> failed, string name, (long Send, long Receive) positions = default)
    {
        ArgumentNullException.ThrowIfNull(ring);
        _parser = parser ?? throw new ArgumentNullException(nameof(parser));
        _received = received ?? throw new ArgumentNullException(nameof(received));
        _failed = failed ?? throw new ArgumentNullException(nameof(failed));
        _spinTicks = (long)(Math.Max(0, spin.TotalSeconds) * System.Diagnostics.Stopwatch.Frequency);
        _send = new RingQueue(ring, coordinator ? RingControl.RequestQueueOffset : RingControl.ReplyQueueOffset, positions.Send);
        try
        {
            _receive = new RingQueue(ring, coordinator ? RingControl.ReplyQueueOffset : RingControl.RequestQueueOffset, positions.Receive);
        }
        catch
        {
            _send.Dispose();
            throw;
        }
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = name };
    }

    /// <summary>This side's next message numbers in its send and receive queues (final once disposed).</summary>
    public (long Send, long Receive) Positions => (_send.Position, _receive.Position);

    /// <summary>Sleeps of the reader that the backstop ended with a message waiting (see <see cref="RingQueue.MissedWakeUps"/>).</summary>
    public long MissedWakeUps => _receive.MissedWakeUps;

    /// <summary>Starts the reader thread (once).</summary>
    public void Start() => _reader.Start();

    /// <summary>
    /// Writes <paramref name="message"/> into the send queue and rings. False (nothing sent; the caller uses the stream)
    /// when it does not fit a slot, the slot is not free yet, or the endpoint is disposed. Thread-safe.
    /// </summary>
    public bool TrySend(TSend message)
    {
        lock (_sendLock)
        {
            if (_disposed || !_send.TryWrite(message))
            {
                return false;
            }
            _send.Ring();
            return true;
        }
    }

    /// <summary>True when another message is already published behind the one being handled. Only meaningful on the
    /// reader thread, inside the <c>received</c> callback (the worker computes a lone request there and hands requests
    /// that have others queued behind them to the thread pool).</summary>
    public bool MoreReceived => _receive.HasMessage;

    private void ReadLoop()
    {
        var buffer = new byte[RingControl.MaxMessageBytes];
        try
        {
            while (!_receive.IsClosed)
            {
                _receive.Wait(_spinTicks);
                int length;
                while (!_receive.IsClosed && (length = _receive.TryRead(buffer)) >= 0)
                {
                    TReceive message;
                    try
                    {
                        message = _parser.ParseFrom(buffer.AsSpan(0, length));
                    }
                    catch (InvalidProtocolBufferException ex)
                    {
                        throw new RingProtocolException($"a doorbell slot holds no valid {typeof(TReceive).Name} ({length} bytes): {ex.Message}");
                    }
                    _received(message);
                }
            }
        }
        catch (RingProtocolException ex)
        {
            _receive.Close();
            _failed(ex);
        }
        catch (Exception ex)
        {
            // A failure while handling a message must end this session, never the process (this is a bare thread).
            _receive.Close();
            _failed(new RingProtocolException($"handling a doorbell message failed: {ex.GetType().Name}: {ex.Message}"));
        }
    }

    /// <summary>Stops the reader (waits for it to return from its current callback) without closing the send side.</summary>
    public void StopReceiving()
    {
        _receive.Close();
        if (Thread.CurrentThread != _reader && _reader.ThreadState != ThreadState.Unstarted)
        {
            _reader.Join();
        }
    }

    /// <summary>Stops the reader, refuses further sends and gives the ring references back.</summary>
    public void Dispose()
    {
        StopReceiving();
        lock (_sendLock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        _send.Dispose();
        _receive.Dispose();
    }
}
