using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// Per-MoE-layer round trip coordinator → worker → coordinator on loopback at hidden 5120, bf16, for 1/64/512/4096
/// rows: raw TCP echo, plain HTTP/2 POST echo, and our data plane (<see cref="WorkerConnection"/>: one bidi stream,
/// TensorFrame marshaller, pooled buffers, cluster credential; inline and shared-memory ring passed as a sealed memfd),
/// all against echo servers in one separate
/// process, measured in the same run. Prints medians and ratios to TCP.
/// </summary>
internal static class DataPlaneBenchmark
{
    public const int Hidden = 5120;

    public static async Task<int> RunAsync(string[] args)
    {
        int[] sizes = args.SkipWhile(a => a != "--rows").Skip(1).FirstOrDefault()?.Split(',').Select(int.Parse).ToArray() ?? [1, 64, 512, 4096];
        double scale = double.Parse(args.SkipWhile(a => a != "--scale").Skip(1).FirstOrDefault() ?? "1", System.Globalization.CultureInfo.InvariantCulture);
        // --spin MICROSECONDS: the doorbell readers' spin before they sleep, on both ends (default: the options' 0).
        string spin = args.SkipWhile(a => a != "--spin").Skip(1).FirstOrDefault() ?? "0";
        string host = Environment.ProcessPath!;
        string[] serverArgs = Path.GetFileNameWithoutExtension(host) == "dotnet"
            ? [typeof(DataPlaneBenchmark).Assembly.Location, "dataplane-server", "--spin", spin]
            : ["dataplane-server", "--spin", spin];
        // The echo server requires the cluster credential, as a worker does; both ends get a fresh one.
        string token = ClusterToken.Generate();
        var start = new ProcessStartInfo(host, serverArgs)
        {
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.Environment[ClusterToken.EnvironmentVariable] = token;
        // Throw-away cluster TLS credentials (CA + node certificate) for the TLS listener and this client.
        using var credentials = LocalClusterCredentials.Create();
        start.Environment["DISTRIBUTED_Tls__CertificatePath"] = credentials.Options.CertificatePath;
        start.Environment["DISTRIBUTED_Tls__KeyPath"] = credentials.Options.KeyPath;
        start.Environment["DISTRIBUTED_Tls__CaPath"] = credentials.Options.CaPath;
        using var server = Process.Start(start)!;
        string ready = (await server.StandardOutput.ReadLineAsync())!;
        int tcpPort = int.Parse(ready.Split(' ')[1]["tcp=".Length..]);
        string http = ready.Split(' ')[2]["http=".Length..];
        string unguarded = ready.Split(' ')[3]["unguarded=".Length..];
        string tlsAddress = ready.Split(' ')[4]["tls=".Length..];
        try
        {
            Console.WriteLine($"data plane round trip, loopback, hidden {Hidden}, bf16 payload both ways; median of N (server pid {server.Id})");
            Console.WriteLine($"shm = rows in the shared ring, descriptor on the stream (doorbell off); bell = rows in the ring, header through its doorbell (readers spin {spin} µs)");
            Console.WriteLine("| rows | payload | tcp ms | h2 POST ms | grpc stream ms | grpc shm ms | shm bell ms | grpc unguarded ms | grpc tls ms | h2/tcp | grpc/tcp | grpc/h2 | shm/tcp | bell/tcp | bell/shm | shm/grpc | grpc/unguarded | tls/grpc |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            var breakdown = new List<string>();
            using var tcp = new TcpClient { NoDelay = true };
            await tcp.ConnectAsync(IPAddress.Loopback, tcpPort);
            using var h2 = new HttpClient(new SocketsHttpHandler { InitialHttp2StreamWindowSize = 16 << 20, EnableMultipleHttp2Connections = true });
            var model = new ModelDescriptor("bench", Hidden, 16, 2, 4, [1]);
            var inline = new DistributionOptions { WireDType = WireDType.Bf16, PreferSharedMemory = false, ClusterToken = token };
            var shm = new DistributionOptions { WireDType = WireDType.Bf16, PreferSharedMemory = true, SharedRingBytes = 128L << 20, ClusterToken = token, RingDoorbell = false };
            var bell = new DistributionOptions { WireDType = WireDType.Bf16, PreferSharedMemory = true, SharedRingBytes = 128L << 20, ClusterToken = token, RingDoorbell = true,
                DoorbellSpin = TimeSpan.FromMicroseconds(double.Parse(spin, System.Globalization.CultureInfo.InvariantCulture)) };
            await using var grpc = await WorkerConnection.ConnectAsync(new WorkerEndpoint("echo", http), model, inline, NullLogger.Instance, CancellationToken.None);
            await using var grpcBare = await WorkerConnection.ConnectAsync(new WorkerEndpoint("bare", unguarded), model, inline, NullLogger.Instance, CancellationToken.None);
            await using var grpcShm = await WorkerConnection.ConnectAsync(new WorkerEndpoint("echo", http), model, shm, NullLogger.Instance, CancellationToken.None);
            await using var grpcBell = await WorkerConnection.ConnectAsync(new WorkerEndpoint("echo", http), model, bell, NullLogger.Instance, CancellationToken.None);
            await using var grpcTls = await WorkerConnection.ConnectAsync(new WorkerEndpoint("tls", tlsAddress), model, inline, NullLogger.Instance, CancellationToken.None,
                credentials.Credentials);
            if (grpcShm.Transport != RowTransport.SharedMemoryFd || grpcShm.UsesDoorbell || grpcBell.Transport != RowTransport.SharedMemoryFd || !grpcBell.UsesDoorbell)
            {
                throw new InvalidOperationException($"the shared-memory connections fell back ({grpcShm.Transport}, doorbell {grpcShm.UsesDoorbell}; {grpcBell.Transport}, doorbell {grpcBell.UsesDoorbell})");
            }
            foreach (int rows in sizes)
            {
                int bytes = rows * Hidden * 2;
                var payload = new byte[bytes];
                new Random(rows).NextBytes(payload);
                var (warm, iters) = rows switch { <= 1 => (300, 3000), <= 64 => (100, 1000), <= 512 => (20, 200), _ => (5, 40) };
                warm = Math.Max(1, (int)(warm * scale));
                iters = Math.Max(3, (int)(iters * scale));
                var inlineParts = new Breakdown();
                var shmParts = new Breakdown();
                var bellParts = new Breakdown();
                var m = await MediansAsync(warm, iters, () =>
                    {
                        inlineParts.Clear();
                        shmParts.Clear();
                        bellParts.Clear();
                    },
                    () => TcpRoundTripAsync(tcp.GetStream(), payload),
                    () => H2RoundTripAsync(h2, http, payload, token),
                    () => GrpcRoundTripAsync(grpc, rows, payload, inlineParts),
                    () => GrpcRoundTripAsync(grpcShm, rows, payload, shmParts),
                    () => GrpcRoundTripAsync(grpcBell, rows, payload, bellParts),
                    () => GrpcRoundTripAsync(grpcBare, rows, payload),
                    () => GrpcRoundTripAsync(grpcTls, rows, payload));
                var (t, h, g, s, d, b, x) = (m[0], m[1], m[2], m[3], m[4], m[5], m[6]);
                Console.WriteLine($"| {rows} | {Size(bytes)} | {t:F3} | {h:F3} | {g:F3} | {s:F3} | {d:F3} | {b:F3} | {x:F3} | {h / t:F2}× | {g / t:F2}× | {g / h:F2}× | {s / t:F2}× | {d / t:F2}× | {d / s:F2}× | {s / g:F2}× | {g / b:F2}× | {x / g:F2}× |");
                breakdown.Add($"| {rows} | grpc inline | {inlineParts} |");
                breakdown.Add($"| {rows} | grpc shm | {shmParts} |");
                breakdown.Add($"| {rows} | shm bell | {bellParts} |");
            }
            Console.WriteLine();
            Console.WriteLine("where a gRPC round trip goes (medians, ms): copy rows in; send = the stream write until it returns (serialize, HTTP/2 framing, flush);");
            Console.WriteLine("away = from then until the reader loop holds the reply (wire both ways, server, client HTTP/2 read and parse); hop = until the");
            Console.WriteLine("awaiting code runs (thread-pool hop); copy out = the reply rows read out");
            Console.WriteLine("| rows | path | copy in | send | away | hop | copy out |");
            Console.WriteLine("|---|---|---|---|---|---|---|");
            breakdown.ForEach(Console.WriteLine);
        }
        finally
        {
            await server.StandardInput.WriteLineAsync();
            if (!server.WaitForExit(5000))
            {
                server.Kill();
            }
        }
        return 0;
    }

    private static string Size(int bytes) => bytes >= 1 << 20 ? $"{bytes / (double)(1 << 20):F1} MiB" : $"{bytes / 1024.0:F0} KiB";

    // The transports take turns round trip by round trip (the first one rotating), so that load arriving from elsewhere
    // on a shared machine hits all of them alike instead of whichever happened to be measured at that moment.
    // Warm-up is also at least WarmUpTime long, so that with few round trips (a small --scale) neither the client's nor
    // the server's HTTP/2 and gRPC code is measured before tiered JIT has recompiled it.
    private static readonly TimeSpan WarmUpTime = TimeSpan.FromSeconds(3);

    private static async Task<double[]> MediansAsync(int warm, int iters, Action? warmedUp, params Func<Task>[] roundTrips)
    {
        long warmStart = Stopwatch.GetTimestamp();
        for (int i = 0; i < warm || Stopwatch.GetElapsedTime(warmStart) < WarmUpTime; i++)
        {
            foreach (var roundTrip in roundTrips)
            {
                await roundTrip();
            }
        }
        warmedUp?.Invoke();
        var samples = new double[roundTrips.Length][];
        for (int k = 0; k < roundTrips.Length; k++)
        {
            samples[k] = new double[iters];
        }
        for (int i = 0; i < iters; i++)
        {
            for (int j = 0; j < roundTrips.Length; j++)
            {
                int k = (i + j) % roundTrips.Length;
                long t0 = Stopwatch.GetTimestamp();
                await roundTrips[k]();
                samples[k][i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
        }
        return [.. samples.Select(x =>
        {
            Array.Sort(x);
            return x[iters / 2];
        })];
    }

    private static readonly byte[] EchoBuffer = new byte[4096 * Hidden * 2 + 8];

    private static async Task TcpRoundTripAsync(NetworkStream stream, byte[] payload)
    {
        BitConverter.TryWriteBytes(EchoBuffer.AsSpan(0, 8), (long)payload.Length);
        await stream.WriteAsync(EchoBuffer.AsMemory(0, 8));
        await stream.WriteAsync(payload);
        await DataPlaneServer.ReadExactAsync(stream, EchoBuffer.AsMemory(0, 8));
        await DataPlaneServer.ReadExactAsync(stream, EchoBuffer.AsMemory(8, payload.Length));
    }

    private static async Task H2RoundTripAsync(HttpClient client, string url, byte[] payload, string token)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url + "/echo")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(payload),
        };
        // The echo listener is guarded like a worker's data plane: without the credential this would measure a 401.
        request.Headers.TryAddWithoutValidation(ClusterToken.MetadataKey, "Bearer " + token);
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        response.EnsureSuccessStatusCode();
        await using var body = await response.Content.ReadAsStreamAsync();
        int read = 0;
        while (true)
        {
            int n = await body.ReadAsync(EchoBuffer.AsMemory(read % (EchoBuffer.Length - (1 << 20)), 1 << 20));
            if (n == 0)
            {
                break;
            }
            read += n;
        }
    }

    private static async Task GrpcRoundTripAsync(WorkerConnection connection, int rows, byte[] payload, Breakdown? parts = null)
    {
        long t0 = Stopwatch.GetTimestamp();
        using var lease = connection.RentRows(payload.Length);
        payload.CopyTo(lease.Span);
        var header = new ExpertRequest { Layer = 1, Dtype = WireDType.Bf16, HiddenSize = Hidden, Rows = (uint)rows, Segments = { new ExpertSegment { Expert = 0, Rows = (uint)rows } } };
        long t1 = Stopwatch.GetTimestamp();
        var replyTask = await connection.SendAsync(header, lease, CancellationToken.None);
        long t2 = Stopwatch.GetTimestamp();
        using var reply = await replyTask;
        long t3 = Stopwatch.GetTimestamp();
        ReadOnlySpan<byte> back = reply.Header.SharedRows is null ? reply.Payload.Span : lease.Span;
        back.CopyTo(EchoBuffer.AsSpan(8));
        long t4 = Stopwatch.GetTimestamp();
        // A reply that arrived before the write returned counts as no time away.
        long received = Math.Max(reply.ReceivedTimestamp, t2);
        parts?.Add(t1 - t0, t2 - t1, received - t2, t3 - received, t4 - t3);
    }

    // Stopwatch-instrumented stages of the round trips of one path (issue #15 profile), medians.
    private sealed class Breakdown
    {
        private readonly List<long>[] _stages = [[], [], [], [], []];

        public void Clear()
        {
            foreach (var s in _stages)
            {
                s.Clear();
            }
        }

        public void Add(params long[] ticks)
        {
            for (int i = 0; i < ticks.Length; i++)
            {
                _stages[i].Add(ticks[i]);
            }
        }

        public override string ToString() => string.Join(" | ", _stages.Select(s =>
        {
            if (s.Count == 0)
            {
                return "-";
            }
            var sorted = s.Order().ToArray();
            return (sorted[sorted.Length / 2] * 1000.0 / Stopwatch.Frequency).ToString("F3", System.Globalization.CultureInfo.InvariantCulture);
        }));
    }
}
