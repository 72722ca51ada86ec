using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Distributed.Tests.Shared;

/// <summary>
/// Benchmark tooling, never the product path: a user-space TCP relay that holds every byte for a fixed time in each
/// direction before passing it on, so that a coordinator talking to a worker through it sees the one-way delay of a
/// real link (50 µs ≈ same-rack TCP, 200 µs ≈ cross-rack). The kernels of the development machines have no
/// <c>netem</c> qdisc, hence user space.
/// <para>Model: a pipe with propagation delay, not a bandwidth limit. Each direction has a reader thread that stamps
/// every chunk it receives with "due = arrival + delay" and queues it, and a writer thread that sends the chunks in
/// order once due, so several chunks can be in flight at once. The writer sleeps with <c>clock_nanosleep</c> on
/// <c>CLOCK_MONOTONIC</c> (absolute deadline) with the thread's timer slack set to 1 ns (Linux), so it neither spins a
/// core (the machines are 2-core) nor adds the default 50 µs of slack; the remaining error is the scheduler's wake-up
/// latency, which <see cref="HoldStatistics"/> reports (hold = time a chunk actually spent in the relay).</para>
/// <para>With a delay of zero the chunk is forwarded by the reader at once (one thread per direction): that is the
/// relay's own cost, the baseline the delayed cases add to.</para>
/// <para>Same-host shared memory bypasses the relay (rows travel in the ring, only the descriptor crosses TCP), so
/// the delayed cases must be measured with the inline transport.</para>
/// </summary>
public sealed class DelayRelay : IDisposable
{
    private const int ChunkBytes = 64 << 10;

    private readonly Socket _listener;
    private readonly EndPoint _target;
    private readonly long _delayTicks;
    private readonly List<Socket> _sockets = [];
    private readonly HoldRecorder _holds = new();
    private volatile bool _stopped;

    private DelayRelay(Socket listener, EndPoint target, TimeSpan delay)
    {
        _listener = listener;
        _target = target;
        Delay = delay;
        _delayTicks = (long)(delay.TotalSeconds * Stopwatch.Frequency);
        Endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var accept = new Thread(AcceptLoop) { IsBackground = true, Name = $"relay-accept-{Endpoint.Port}" };
        accept.Start();
    }

    /// <summary>Where clients connect (loopback, a free port).</summary>
    public IPEndPoint Endpoint { get; }

    /// <summary><c>http://127.0.0.1:port</c> of <see cref="Endpoint"/>.</summary>
    public string HttpAddress => $"http://{Endpoint.Address}:{Endpoint.Port}";

    /// <summary>The one-way delay added to each direction.</summary>
    public TimeSpan Delay { get; }

    /// <summary>Connections accepted so far.</summary>
    public int Connections { get; private set; }

    /// <summary>
    /// Starts a relay on a free loopback port that forwards every connection to <paramref name="target"/>, holding each
    /// direction's bytes for <paramref name="oneWayDelay"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative delay, or one of a second or more.</exception>
    /// <exception cref="PlatformNotSupportedException">Not Linux with a nanosecond monotonic clock (the relay holds bytes
    /// with <c>clock_nanosleep</c> to absolute deadlines; a millisecond sleep could not make 50 µs delays).</exception>
    public static DelayRelay Start(IPEndPoint target, TimeSpan oneWayDelay)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (PreciseSleep.Unsupported is { } why)
        {
            throw new PlatformNotSupportedException(why);
        }
        if (oneWayDelay < TimeSpan.Zero || oneWayDelay >= TimeSpan.FromSeconds(1))
        {
            throw new ArgumentOutOfRangeException(nameof(oneWayDelay), oneWayDelay, "the delay must be within [0, 1 s)");
        }
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(64);
            return new DelayRelay(listener, target, oneWayDelay);
        }
        catch
        {
            listener.Dispose();
            throw;
        }
    }

    /// <summary>A relay in front of <paramref name="httpAddress"/> (<c>http://host:port</c>, loopback only).</summary>
    /// <exception cref="ArgumentException">Not an http:// address of a loopback IP.</exception>
    public static DelayRelay Start(string httpAddress, TimeSpan oneWayDelay)
    {
        var uri = new Uri(httpAddress);
        if (uri.Scheme != Uri.UriSchemeHttp || !IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) || !IPAddress.IsLoopback(ip))
        {
            throw new ArgumentException($"'{httpAddress}' is not an http:// address on loopback", nameof(httpAddress));
        }
        return Start(new IPEndPoint(ip, uri.Port), oneWayDelay);
    }

    /// <summary>How long chunks actually spent in the relay (both directions, every chunk since the last reset).</summary>
    public HoldSummary HoldStatistics() => _holds.Summary();

    /// <summary>Forgets the hold samples so far.</summary>
    public void ResetHoldStatistics() => _holds.Reset();

    private void AcceptLoop()
    {
        while (!_stopped)
        {
            Socket client;
            try
            {
                client = _listener.Accept();
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                return;
            }
            var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                upstream.Connect(_target);
            }
            catch (SocketException)
            {
                client.Dispose();
                upstream.Dispose();
                continue;
            }
            client.NoDelay = true;
            upstream.NoDelay = true;
            lock (_sockets)
            {
                if (_stopped)
                {
                    client.Dispose();
                    upstream.Dispose();
                    return;
                }
                _sockets.Add(client);
                _sockets.Add(upstream);
                Connections++;
            }
            var pair = new SocketPair(client, upstream);
            StartDirection(client, upstream, pair, "up");
            StartDirection(upstream, client, pair, "down");
        }
    }

    private void StartDirection(Socket from, Socket to, SocketPair pair, string name)
    {
        if (_delayTicks == 0)
        {
            new Thread(() => Forward(from, to, pair)) { IsBackground = true, Name = $"relay-{name}" }.Start();
            return;
        }
        var queue = new ChunkQueue();
        new Thread(() => Read(from, queue)) { IsBackground = true, Name = $"relay-{name}-read" }.Start();
        new Thread(() => Write(to, queue, pair)) { IsBackground = true, Name = $"relay-{name}-write" }.Start();
    }

    private static void Forward(Socket from, Socket to, SocketPair pair)
    {
        var buffer = new byte[ChunkBytes];
        try
        {
            while (true)
            {
                int n = from.Receive(buffer);
                if (n == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }
                SendAll(to, buffer.AsSpan(0, n));
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            pair.Close();
        }
    }

    private void Read(Socket from, ChunkQueue queue)
    {
        try
        {
            while (true)
            {
                var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
                int n = from.Receive(buffer);
                if (n == 0)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    queue.Add(new Chunk(null, 0, 0));
                    return;
                }
                long arrived = Stopwatch.GetTimestamp();
                queue.Add(new Chunk(buffer, n, arrived));
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            queue.Add(new Chunk(null, -1, 0));
        }
    }

    private void Write(Socket to, ChunkQueue queue, SocketPair pair)
    {
        PreciseSleep.ReduceTimerSlack();
        while (true)
        {
            var chunk = queue.Take();
            if (chunk.Buffer is null)
            {
                if (chunk.Length == 0)
                {
                    TryShutdown(to);
                }
                else
                {
                    pair.Close();
                }
                return;
            }
            long due = chunk.Arrived + _delayTicks;
            PreciseSleep.Until(due);
            _holds.Add(Stopwatch.GetTimestamp() - chunk.Arrived);
            try
            {
                SendAll(to, chunk.Buffer.AsSpan(0, chunk.Length));
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                pair.Close();
                return;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(chunk.Buffer);
            }
        }
    }

    private static void TryShutdown(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already gone.
        }
    }

    private static void SendAll(Socket to, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = to.Send(data);
            data = data[sent..];
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _stopped = true;
        _listener.Dispose();
        lock (_sockets)
        {
            foreach (var s in _sockets)
            {
                s.Dispose();
            }
            _sockets.Clear();
        }
    }

    private readonly record struct Chunk(byte[]? Buffer, int Length, long Arrived);

    private sealed class SocketPair(Socket a, Socket b)
    {
        public void Close()
        {
            a.Dispose();
            b.Dispose();
        }
    }

    // One producer (the reader), one consumer (the writer); the writer blocks while the queue is empty.
    private sealed class ChunkQueue
    {
        private readonly Queue<Chunk> _chunks = new();

        public void Add(Chunk chunk)
        {
            lock (_chunks)
            {
                _chunks.Enqueue(chunk);
                if (_chunks.Count == 1)
                {
                    Monitor.Pulse(_chunks);
                }
            }
        }

        public Chunk Take()
        {
            lock (_chunks)
            {
                while (_chunks.Count == 0)
                {
                    Monitor.Wait(_chunks);
                }
                return _chunks.Dequeue();
            }
        }
    }

    private sealed class HoldRecorder
    {
        private readonly List<long> _ticks = [];

        public void Add(long ticks)
        {
            lock (_ticks)
            {
                // Bounded: a long benchmark keeps the first million samples, plenty for a median and a p99.
                if (_ticks.Count < 1_000_000)
                {
                    _ticks.Add(ticks);
                }
            }
        }

        public void Reset()
        {
            lock (_ticks)
            {
                _ticks.Clear();
            }
        }

        public HoldSummary Summary()
        {
            long[] sorted;
            lock (_ticks)
            {
                sorted = [.. _ticks];
            }
            Array.Sort(sorted);
            double Us(double q) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))] * 1e6 / Stopwatch.Frequency;
            return new HoldSummary(sorted.Length, Us(0.5), Us(0.99));
        }
    }
}

/// <summary>How long chunks spent in a <see cref="DelayRelay"/>.</summary>
/// <param name="Chunks">Chunks held.</param>
/// <param name="P50Microseconds">Median hold, µs.</param>
/// <param name="P99Microseconds">99th percentile hold, µs.</param>
public readonly record struct HoldSummary(int Chunks, double P50Microseconds, double P99Microseconds);

/// <summary>Sleeps to an absolute <see cref="Stopwatch"/> time without spinning (<c>clock_nanosleep</c>; Linux only, see
/// <see cref="Unsupported"/>).</summary>
internal static class PreciseSleep
{
    private const int ClockMonotonic = 1;
    private const int TimerAbsTime = 1;
    private const int PrSetTimerSlack = 29;

    /// <summary>Why precise sleeps are not available here, or null. On Linux .NET's Stopwatch reads CLOCK_MONOTONIC in
    /// nanoseconds, so its timestamps are clock_nanosleep deadlines.</summary>
    public static string? Unsupported { get; } = !OperatingSystem.IsLinux() ? "the delay relay needs Linux (clock_nanosleep)"
        : Stopwatch.Frequency != 1_000_000_000 ? $"the delay relay needs a nanosecond Stopwatch (CLOCK_MONOTONIC), this one ticks at {Stopwatch.Frequency} Hz"
        : null;

    /// <summary>Asks the kernel to wake this thread within 1 ns of its timers instead of the default 50 µs.</summary>
    public static void ReduceTimerSlack() => _ = Prctl(PrSetTimerSlack, 1, 0, 0, 0);

    /// <summary>Returns at or after Stopwatch time <paramref name="due"/>.</summary>
    public static void Until(long due)
    {
        while (true)
        {
            long now = Stopwatch.GetTimestamp();
            if (now >= due)
            {
                return;
            }
            // Interrupted sleeps (EINTR) come round the loop again.
            var deadline = new Timespec { Seconds = due / 1_000_000_000, Nanoseconds = due % 1_000_000_000 };
            _ = ClockNanosleep(ClockMonotonic, TimerAbsTime, ref deadline, IntPtr.Zero);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_nanosleep")]
    private static extern int ClockNanosleep(int clock, int flags, ref Timespec request, IntPtr remaining);

    [DllImport("libc", EntryPoint = "prctl")]
    private static extern int Prctl(int option, ulong arg2, ulong arg3, ulong arg4, ulong arg5);
}
