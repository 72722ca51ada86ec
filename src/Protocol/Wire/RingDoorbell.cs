using System.Diagnostics;
using Google.Protobuf;

namespace Distributed.Protocol.Wire;

/// <summary>
/// Layout of the control area at the start of a <see cref="SharedRing"/> whose session negotiated the ring doorbell
/// (<c>SharedRingOffer.doorbell</c> and <c>SharedRingRendezvous.doorbell</c>, protocol 1.4): two single-producer
/// single-consumer queues of fixed slots, requests (coordinator → worker) at <see cref="RequestQueueOffset"/> and
/// replies (worker → coordinator) at <see cref="ReplyQueueOffset"/>; row regions start at <see cref="ControlBytes"/>.
/// <para>A queue is a 4096-byte header page (the doorbell word at byte 0, written by the producer; the consumer's
/// "asleep" word at byte 64) then <see cref="Slots"/> slots of <see cref="SlotBytes"/> bytes: an 8-byte sequence, a
/// 4-byte length, 4 reserved bytes, then the message (a serialized <c>ExpertRequest</c> or <c>ExpertReply</c> header;
/// the rows stay in the ring region the header names). Slot <c>i</c> starts with sequence <c>i</c> (the creator
/// initializes it, <see cref="Initialize"/>); the producer's message number <c>n</c> goes into slot <c>n mod Slots</c>
/// when its sequence is <c>n</c> and publishes it by writing <c>n + 1</c>; the consumer takes it when it reads
/// <c>n + 1</c> and gives the slot back by writing <c>n + Slots</c>. Each side keeps its own message number privately:
/// nothing the peer writes into the control area is trusted beyond "is my next slot ready", and every message is
/// copied out of the slot before it is parsed and validated.</para>
/// <para>Wake-ups use a futex on the doorbell word (shared, so across the two processes' mappings): the consumer spins
/// briefly, then marks itself asleep, re-checks its slot and waits on the word; the producer publishes, increments the
/// word and wakes the consumer only when it is marked asleep. A peer scribbling on these words can only delay or
/// hasten its own messages.</para>
/// </summary>
public static class RingControl
{
    /// <summary>Slots per queue: at most this many requests of a session are in flight through the doorbell.</summary>
    public const int Slots = 64;

    /// <summary>Bytes per slot, header included.</summary>
    public const int SlotBytes = 2048;

    /// <summary>Bytes before a slot's message (sequence, length, reserved).</summary>
    public const int SlotHeaderBytes = 16;

    /// <summary>Longest message a slot holds; a longer header travels over the gRPC stream instead.</summary>
    public const int MaxMessageBytes = SlotBytes - SlotHeaderBytes;

    private const int QueueHeaderBytes = 4096;

    /// <summary>Bytes of one queue (header page and slots).</summary>
    public const long QueueBytes = QueueHeaderBytes + (long)Slots * SlotBytes;

    /// <summary>Where the request queue starts.</summary>
    public const long RequestQueueOffset = 0;

    /// <summary>Where the reply queue starts.</summary>
    public const long ReplyQueueOffset = QueueBytes;

    /// <summary>Bytes of the control area; row regions of a doorbell session start here.</summary>
    public const long ControlBytes = 2 * QueueBytes;

    /// <summary>Smallest ring a doorbell session uses (the control area and as much again for rows).</summary>
    public const long MinRingBytes = 2 * ControlBytes;

    /// <summary>True where the doorbell works: Linux on x86-64 or arm64 (memfd, futex).</summary>
    public static bool IsSupported => SharedRing.IsSupported && UnixInterop.FutexSupported;

    /// <summary>Whether a ring of <paramref name="ringBytes"/> can carry a doorbell here (both ends decide with this).</summary>
    public static bool CanUse(long ringBytes) => IsSupported && ringBytes >= MinRingBytes;

    /// <summary>Sets every slot's starting sequence in both queues (the creator does this once, before passing the ring on).</summary>
    /// <exception cref="ArgumentException">The ring is smaller than <see cref="MinRingBytes"/>.</exception>
    public static unsafe void Initialize(SharedRing ring)
    {
        ArgumentNullException.ThrowIfNull(ring);
        if (ring.Size < MinRingBytes || !ring.TryGetSpan(0, (ulong)ControlBytes, out var control))
        {
            throw new ArgumentException($"a ring of {ring.Size} bytes has no room for the doorbell's {MinRingBytes} bytes", nameof(ring));
        }
        control.Clear();
        fixed (byte* area = control)
        {
            foreach (long queue in (ReadOnlySpan<long>)[RequestQueueOffset, ReplyQueueOffset])
            {
                for (int i = 0; i < Slots; i++)
                {
                    *(long*)(area + queue + QueueHeaderBytes + ((long)i * SlotBytes)) = i;
                }
            }
        }
    }

    internal static int HeaderBytes => QueueHeaderBytes;
}

/// <summary>
/// One direction of a <see cref="RingControl"/> doorbell: used by ONE producer (callers serialize
/// <see cref="TryWrite"/> and <see cref="Ring"/>) or ONE consumer thread (<see cref="TryRead"/> and
/// <see cref="Wait"/>), never both. Holds a reference on the ring until disposed.
/// </summary>
public sealed unsafe class RingQueue : IDisposable
{
    private readonly SharedRing _ring;
    private readonly byte* _slots;
    private readonly uint* _bell;
    private readonly uint* _asleep;
    private long _next;
    private volatile bool _closed;
    private int _disposed;
    private long _missedWakeUps;

    /// <summary>The queue at <paramref name="offset"/> (<see cref="RingControl.RequestQueueOffset"/> or
    /// <see cref="RingControl.ReplyQueueOffset"/>) of <paramref name="ring"/>, this side's next message number being
    /// <paramref name="position"/> (0 for a new session; where an earlier user of this side left off otherwise).</summary>
    /// <exception cref="SharedRingException">The ring is closing or too small.</exception>
    public RingQueue(SharedRing ring, long offset, long position = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(position);
        _next = position;
        ArgumentNullException.ThrowIfNull(ring);
        if (ring.Size < RingControl.MinRingBytes || (offset != RingControl.RequestQueueOffset && offset != RingControl.ReplyQueueOffset))
        {
            throw new SharedRingException($"a ring of {ring.Size} bytes has no doorbell queue at {offset}");
        }
        if (!ring.TryAcquire())
        {
            throw new SharedRingException("the ring is closing");
        }
        _ring = ring;
        byte* queue = ring.BaseAddress + offset;
        _bell = (uint*)queue;
        _asleep = (uint*)(queue + 64);
        _slots = queue + RingControl.HeaderBytes;
    }

    /// <summary>Sleeps that ended by the 250 ms backstop with a message waiting: wake-ups that did not arrive (a peer
    /// rewriting the doorbell words; with honest peers always 0, which the tests check).</summary>
    public long MissedWakeUps => Interlocked.Read(ref _missedWakeUps);

    /// <summary>True once <see cref="Close"/> ran: <see cref="Wait"/> returns at once.</summary>
    public bool IsClosed => _closed;

    private byte* Slot(long n) => _slots + ((n % RingControl.Slots) * RingControl.SlotBytes);

    /// <summary>This side's next message number (to hand on to a later user of the same side, see the constructor).</summary>
    public long Position => _next;

    /// <summary>True when the consumer's next slot is published.</summary>
    public bool HasMessage => Volatile.Read(ref *(long*)Slot(_next)) == _next + 1;

    /// <summary>
    /// Producer: serializes <paramref name="message"/> into the next slot and publishes it (call <see cref="Ring"/>
    /// after). False, with nothing written, when the message is longer than <see cref="RingControl.MaxMessageBytes"/>
    /// or the slot is not free (the consumer has not given it back: a full queue, or a peer that does not play along).
    /// </summary>
    public bool TryWrite(IMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        int size = message.CalculateSize();
        byte* slot = Slot(_next);
        if (size > RingControl.MaxMessageBytes || _closed || Volatile.Read(ref *(long*)slot) != _next)
        {
            return false;
        }
        message.WriteTo(new Span<byte>(slot + RingControl.SlotHeaderBytes, size));
        *(int*)(slot + 8) = size;
        Volatile.Write(ref *(long*)slot, _next + 1);
        _next++;
        return true;
    }

    /// <summary>Producer: rings the doorbell after <see cref="TryWrite"/> (a futex wake only when the consumer sleeps).</summary>
    public void Ring()
    {
        // The increment is a full fence: the slot's publication is visible before the consumer's asleep word is read,
        // and a consumer that marked itself asleep after it looked at the slot finds the doorbell word changed.
        Interlocked.Increment(ref *_bell);
        if (Volatile.Read(ref *_asleep) != 0)
        {
            UnixInterop.Futex(_bell, UnixInterop.FutexWake, 1, null);
        }
    }

    /// <summary>
    /// Consumer: copies the next published message into <paramref name="destination"/> (at least
    /// <see cref="RingControl.MaxMessageBytes"/> bytes), gives its slot back and returns its length; -1 when none is published.
    /// </summary>
    /// <exception cref="RingProtocolException">The slot announces a length no slot can hold (the peer broke the protocol).</exception>
    public int TryRead(Span<byte> destination)
    {
        byte* slot = Slot(_next);
        if (Volatile.Read(ref *(long*)slot) != _next + 1)
        {
            return -1;
        }
        int length = Volatile.Read(ref *(int*)(slot + 8));
        if ((uint)length > RingControl.MaxMessageBytes)
        {
            throw new RingProtocolException($"doorbell slot {_next % RingControl.Slots} (message {_next}) announces {length} bytes; a slot holds at most {RingControl.MaxMessageBytes}");
        }
        // Copied out before anything looks at it: the peer can rewrite the slot at any time.
        new ReadOnlySpan<byte>(slot + RingControl.SlotHeaderBytes, length).CopyTo(destination);
        Volatile.Write(ref *(long*)slot, _next + RingControl.Slots);
        _next++;
        return length;
    }

    /// <summary>
    /// Consumer: returns once the next slot is published or <see cref="Close"/> ran: spins for up to
    /// <paramref name="spinTicks"/> (<see cref="Stopwatch"/> ticks), then sleeps on the doorbell word. A sleep also ends
    /// after 250 ms (the caller loops): a backstop against a peer that rewrites the word, not a polling interval.
    /// </summary>
    public void Wait(long spinTicks)
    {
        long start = Stopwatch.GetTimestamp();
        while (!_closed && !HasMessage)
        {
            if (Stopwatch.GetTimestamp() - start >= spinTicks)
            {
                Sleep();
                return;
            }
            Thread.SpinWait(20);
        }
    }

    private void Sleep()
    {
        uint bell = Volatile.Read(ref *_bell);
        Interlocked.Exchange(ref *_asleep, 1);
        if (!_closed && !HasMessage)
        {
            var timeout = new UnixInterop.TimeSpec { Seconds = 0, Nanoseconds = 250_000_000 };
            if (UnixInterop.Futex(_bell, UnixInterop.FutexWait, unchecked((int)bell), &timeout) != 0
                && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == UnixInterop.Etimedout && HasMessage)
            {
                Interlocked.Increment(ref _missedWakeUps);
            }
        }
        Volatile.Write(ref *_asleep, 0);
    }

    /// <summary>Ends waiting: a <see cref="Wait"/> in progress returns, later ones return at once, writes are refused.</summary>
    public void Close()
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }
        _closed = true;
        Interlocked.Increment(ref *_bell);
        UnixInterop.Futex(_bell, UnixInterop.FutexWake, int.MaxValue, null);
    }

    /// <summary>Closes the queue and gives its ring reference back. The caller makes sure no thread still uses it.</summary>
    public void Dispose()
    {
        Close();
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _ring.Release();
        }
    }
}

/// <summary>A peer broke the ring doorbell's protocol (the message says how); the session's stream ends.</summary>
public sealed class RingProtocolException(string message) : IOException(message);
