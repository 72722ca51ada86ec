using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Distributed.Integration.Tests.Benchmarks;

/// <summary>
/// The network-delay relay of the data-plane benchmarks (<see cref="DelayRelay"/>, issue #15): bytes arrive intact and
/// in order in both directions, every byte is held at least the configured delay each way, and a closed side is
/// passed on. (Lower bounds only: how much more than the delay the machine adds is what the relay reports, not a test.)
/// </summary>
public sealed class DelayRelayTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(200)]
    public async Task Bytes_ArriveIntactAndInOrder_BothWays(int delayMicroseconds)
    {
        using var echo = EchoServer.Start();
        using var relay = DelayRelay.Start(echo.Endpoint, TimeSpan.FromMicroseconds(delayMicroseconds));
        using var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(relay.Endpoint);
        var stream = client.GetStream();
        var sent = new byte[3 << 20];
        new Random(15).NextBytes(sent);
        var writing = Task.Run(async () =>
        {
            // Uneven pieces, so chunk boundaries inside the relay differ from the writer's.
            for (int offset = 0, piece = 1; offset < sent.Length; piece = piece * 7 % 100_003 + 1)
            {
                int n = Math.Min(piece, sent.Length - offset);
                await stream.WriteAsync(sent.AsMemory(offset, n));
                offset += n;
            }
            client.Client.Shutdown(SocketShutdown.Send);
        });
        var received = new MemoryStream();
        await stream.CopyToAsync(received).WaitAsync(TimeSpan.FromMinutes(1));
        await writing;
        Assert.Equal(sent.Length, received.Length);
        Assert.True(sent.AsSpan().SequenceEqual(received.GetBuffer().AsSpan(0, (int)received.Length)), "the echoed bytes differ");
        Assert.Equal(1, relay.Connections);
    }

    [RelayFact]
    public async Task EveryRoundTrip_TakesAtLeastTwiceTheOneWayDelay()
    {
        var delay = TimeSpan.FromMilliseconds(2);
        using var echo = EchoServer.Start();
        using var relay = DelayRelay.Start(echo.Endpoint, delay);
        using var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(relay.Endpoint);
        var stream = client.GetStream();
        var buffer = new byte[1];
        for (int i = 0; i < 10; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            await stream.WriteAsync(buffer);
            Assert.Equal(1, await stream.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
            var rtt = Stopwatch.GetElapsedTime(t0);
            Assert.True(rtt >= 2 * delay, $"round trip {rtt.TotalMicroseconds:F0} µs is shorter than twice the {delay.TotalMicroseconds:F0} µs one-way delay");
        }
        var holds = relay.HoldStatistics();
        Assert.Equal(20, holds.Chunks);
        Assert.True(holds.P50Microseconds >= delay.TotalMicroseconds, $"median hold {holds.P50Microseconds:F0} µs");
    }

    [RelayFact]
    public void Start_RefusesNonLoopbackOrNegativeDelay()
    {
        Assert.Throws<ArgumentException>(() => DelayRelay.Start("http://10.1.2.3:5000", TimeSpan.Zero));
        Assert.Throws<ArgumentException>(() => DelayRelay.Start("https://127.0.0.1:5000", TimeSpan.Zero));
        Assert.Throws<ArgumentOutOfRangeException>(() => DelayRelay.Start(new IPEndPoint(IPAddress.Loopback, 1), TimeSpan.FromMicroseconds(-1)));
    }

    // Echoes every byte back until the peer closes its side, then closes.
    private sealed class EchoServer : IDisposable
    {
        private readonly TcpListener _listener;

        private EchoServer(TcpListener listener)
        {
            _listener = listener;
            _ = Task.Run(async () =>
            {
                try
                {
                    while (true)
                    {
                        var c = await _listener.AcceptTcpClientAsync();
                        _ = Task.Run(async () =>
                        {
                            using (c)
                            {
                                var s = c.GetStream();
                                await s.CopyToAsync(s);
                                c.Client.Shutdown(SocketShutdown.Send);
                            }
                        });
                    }
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                }
            });
        }

        public IPEndPoint Endpoint => (IPEndPoint)_listener.LocalEndpoint;

        public static EchoServer Start()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return new EchoServer(listener);
        }

        public void Dispose() => _listener.Stop();
    }

    /// <summary>Skips, with the reason, where the relay cannot hold bytes precisely (not Linux, no nanosecond clock).</summary>
    private sealed class RelayFactAttribute : FactAttribute
    {
        public RelayFactAttribute() => Skip = PreciseSleep.Unsupported;
    }
}
