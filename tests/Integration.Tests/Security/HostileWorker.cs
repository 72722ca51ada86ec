using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Distributed.Checkpoint;
using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Win32.SafeHandles;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// A real ExpertWorker process (static shard of tiny-maverick, cluster credential on) for the hostile-client suite, with
/// the tools a hostile client uses: raw HTTP/2 gRPC requests with hand-built frames, raw Hello bytes, the ring rendezvous
/// with any message and any descriptors. Every line the worker logs is kept so tests can check what it said (and that it
/// never logged a stack trace).
/// </summary>
public partial class HostileWorker : IAsyncLifetime
{
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly TestLog _log = new();
    private WorkerProcess? _process;
    private HttpClient? _http;

    /// <summary>Extra worker arguments (a derived fixture sets them).</summary>
    protected virtual IEnumerable<string> ExtraArguments => [];

    internal TestLog Log => _log;

    public WorkerProcess Process => _process ?? throw new InvalidOperationException("not started");

    public string Address { get; private set; } = "";

    public string OpsAddress { get; private set; } = "";

    public ModelDescriptor Model { get; private set; } = null!;

    /// <summary>A channel that adds no credential by itself.</summary>
    public GrpcChannel Channel { get; private set; } = null!;

    /// <summary>Every line logged so far.</summary>
    public IReadOnlyList<string> Lines => [.. _lines];

    public const ulong PlanVersion = 5;

    public const int MaxRows = 64;

    /// <summary>The largest Dispatch/DispatchOnce message this worker takes (rows × hidden × 4 + 64 KiB).</summary>
    public int MaxMessageBytes => MaxRows * Model.HiddenSize * 4 + (64 << 10);

    public async Task InitializeAsync()
    {
        using (var checkpoint = CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            Model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        string? ready = null;
        _process = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "1:0-127,3:0-127,5:0-127", "--plan-version", PlanVersion.ToString(System.Globalization.CultureInfo.InvariantCulture),
             "--max-rows", MaxRows.ToString(System.Globalization.CultureInfo.InvariantCulture), "--threads", "1", "--worker-id", "hostile", .. ExtraArguments],
            "hostile", line =>
            {
                _lines.Enqueue(line);
                if (line.Contains(WorkerProcess.ReadyMarker, StringComparison.Ordinal))
                {
                    ready = line;
                }
                _log.Write(line);
            });
        Address = await _process.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        OpsAddress = ready!.Split(' ').Single(p => p.StartsWith("ops=", StringComparison.Ordinal))[4..];
        Channel = GrpcChannel.ForAddress(Address, new GrpcChannelOptions { MaxSendMessageSize = 64 << 20, MaxReceiveMessageSize = 64 << 20 });
        _http = new HttpClient(new SocketsHttpHandler { EnableMultipleHttp2Connections = true }) { Timeout = TimeSpan.FromSeconds(30) };
    }

    public async Task DisposeAsync()
    {
        _http?.Dispose();
        Channel?.Dispose();
        if (_process is not null)
        {
            await _process.DisposeAsync();
        }
    }

    /// <summary>Data-plane call metadata; <paramref name="credential"/> null = none.</summary>
    public Metadata Headers(string? credential = "", string? session = null)
    {
        var headers = new Metadata
        {
            { ProtocolVersion.MajorHeader, ProtocolVersion.Major.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            { ProtocolVersion.FingerprintHeader, Model.Fingerprint },
        };
        if (credential is not null)
        {
            headers.Add(ClusterToken.MetadataKey, "Bearer " + (credential.Length == 0 ? TestCredential.Token : credential));
        }
        if (session is not null)
        {
            headers.Add(ProtocolVersion.SessionHeader, session);
        }
        return headers;
    }

    /// <summary>A valid fp32 request for <paramref name="layer"/>, <paramref name="rows"/> rows of expert 3.</summary>
    public (ExpertRequest Header, byte[] Payload) Valid(int rows = 2, ulong id = 7, uint layer = 1)
    {
        var header = new ExpertRequest
        {
            RequestId = id, Layer = layer, PlanVersion = PlanVersion, Dtype = WireDType.Fp32, HiddenSize = (uint)Model.HiddenSize, Rows = (uint)rows,
            Segments = { new ExpertSegment { Expert = 3, Rows = (uint)rows } },
        };
        var values = new float[rows * Model.HiddenSize];
        var rng = new Random(rows);
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(rng.NextDouble() - 0.5);
        }
        var payload = new byte[values.Length * 4];
        WireCodec.Encode(values, WireDType.Fp32, payload);
        return (header, payload);
    }

    /// <summary>The worker answers a valid request (and is alive).</summary>
    public async Task<byte[]> AssertAliveAsync()
    {
        Assert.False(Process.HasExited, "the worker process exited");
        var (h, p) = Valid();
        using var reply = await Channel.CreateCallInvoker().AsyncUnaryCall(ExpertWorkerMethods.DispatchOnce, null,
            new CallOptions(Headers(), DateTime.UtcNow.AddSeconds(20)), new TensorFrame<ExpertRequest>(h, p));
        Assert.Equal(0, reply.Header.Status.Code);
        Assert.Equal(p.Length, reply.Payload.Length);
        return reply.Payload.ToArray();
    }

    /// <summary>Hello, offering (or not) the shared-memory transport with a ring of <paramref name="ringBytes"/>.</summary>
    public async Task<HelloReply> HelloAsync(bool sharedMemory = true, long ringBytes = 1 << 20, Metadata? headers = null, bool doorbell = false)
    {
        var hello = new HelloRequest
        {
            ProtocolMajor = ProtocolVersion.Major, ProtocolMinor = ProtocolVersion.Minor, ModelFingerprint = Model.Fingerprint, CoordinatorId = "hostile-client",
        };
        if (sharedMemory)
        {
            hello.Transports.Add(RowTransport.SharedMemoryFd);
            hello.SharedRing = new SharedRingOffer { SizeBytes = (ulong)ringBytes, HostId = SharedRing.LocalHostId, Doorbell = doorbell };
        }
        hello.Transports.Add(RowTransport.Inline);
        return await Channel.CreateCallInvoker().AsyncUnaryCall(ExpertWorkerMethods.Hello, null,
            new CallOptions(headers ?? Headers(), DateTime.UtcNow.AddSeconds(20)), hello);
    }

    /// <summary>The rendezvous request bytes: magic, session id, nonce.</summary>
    public static byte[] RendezvousMessage(string sessionId, ReadOnlySpan<byte> nonce)
    {
        var message = new byte[RingRendezvous.RequestBytes];
        "DRR1"u8.CopyTo(message);
        Encoding.ASCII.GetBytes(sessionId, message.AsSpan(4));
        nonce.CopyTo(message.AsSpan(4 + RingRendezvous.SessionIdLength));
        return message;
    }

    /// <summary>Offers <paramref name="descriptors"/> for the session of <paramref name="hello"/> (its nonce unless another is given).</summary>
    public static Task<(bool Attached, string Reason)> OfferAsync(HelloReply hello, IReadOnlyList<SafeHandle> descriptors, byte[]? nonce = null)
        => RingRendezvous.ExchangeAsync(hello.SharedRing.SocketPath, RendezvousMessage(hello.SessionId, nonce ?? hello.SharedRing.Nonce.ToByteArray()),
            descriptors, TimeSpan.FromSeconds(10), CancellationToken.None);

    /// <summary>
    /// One raw gRPC call over h2c: <paramref name="body"/> is sent as the request body byte for byte (no framing added).
    /// Returns the grpc-status (from the trailers, or the headers of a trailers-only response) and message.
    /// </summary>
    public async Task<(StatusCode Code, string Message, HttpStatusCode Http)> RawAsync(string method, byte[] body, string? credential = "",
        string? encoding = null, string contentType = "application/grpc")
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, Address + method)
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(body),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
        request.Headers.TryAddWithoutValidation("te", "trailers");
        foreach (var entry in Headers(credential))
        {
            request.Headers.TryAddWithoutValidation(entry.Key, entry.Value);
        }
        if (encoding is not null)
        {
            request.Headers.TryAddWithoutValidation("grpc-encoding", encoding);
        }
        using var response = await _http!.SendAsync(request, HttpCompletionOption.ResponseContentRead);
        string? Get(string name) => response.TrailingHeaders.TryGetValues(name, out var t) ? t.First()
            : response.Headers.TryGetValues(name, out var h) ? h.First() : null;
        string? status = Get("grpc-status");
        return (status is null ? (StatusCode)(-1) : (StatusCode)int.Parse(status, System.Globalization.CultureInfo.InvariantCulture),
            Uri.UnescapeDataString(Get("grpc-message") ?? ""), response.StatusCode);
    }

    /// <summary>Rows the worker computed for <paramref name="layer"/> (<c>moe_expert_rows_total</c>; 0 before any).</summary>
    public async Task<double> RowsComputedAsync(int layer)
    {
        using var http = new HttpClient { BaseAddress = new Uri(OpsAddress) };
        string text = await http.GetStringAsync("/metrics");
        return Operations.OperationsEndpointsTests.ParseSeries(text)
            .Where(kv => kv.Key.StartsWith("moe_expert_rows_total", StringComparison.Ordinal) && kv.Key.Contains($"layer=\"{layer}\"", StringComparison.Ordinal))
            .Sum(kv => kv.Value);
    }

    /// <summary>
    /// A session as a well-behaved coordinator sets it up: Hello with a ring of <paramref name="ringBytes"/>, a sealed memfd
    /// offered and attached, mapped here too, and a Dispatch stream on the session. With <paramref name="doorbell"/> the
    /// ring doorbell is asked for (and must be agreed) and its control area initialized before the ring is passed on.
    /// Dispose it in the test.
    /// </summary>
    public async Task<AttachedSession> AttachAsync(long ringBytes, bool doorbell = false)
    {
        var hello = await HelloAsync(ringBytes: ringBytes, doorbell: doorbell);
        Assert.Equal(doorbell, hello.SharedRing.Doorbell);
        var fd = Memfd(ringBytes);
        try
        {
            var ring = SharedRing.MapReceived(fd, (ulong)ringBytes, ringBytes);
            if (doorbell)
            {
                RingControl.Initialize(ring);
            }
            var (attached, why) = await OfferAsync(hello, [fd]);
            Assert.True(attached, why);
            var call = Channel.CreateCallInvoker().AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(Headers(session: hello.SessionId)));
            return new AttachedSession(hello, fd, ring, call);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The worker holds at most <paramref name="descriptors"/> descriptors open. No wait is needed: the rendezvous closes
    /// every descriptor it received before it answers the offer (<c>RingRendezvousListener.Receive</c>'s finally), so once
    /// the offer's answer has arrived a leak is a leak.
    /// </summary>
    public void AssertDescriptorsAtMost(int descriptors)
    {
        int open = OpenDescriptors();
        Assert.True(open <= descriptors, $"the worker holds {open} descriptors, more than {descriptors}: received ones are not closed");
    }

    /// <summary>
    /// No descriptor or mapping of the worker refers to a file whose path contains <paramref name="name"/>; checked at once
    /// for the reason given at <see cref="AssertDescriptorsAtMost"/>.
    /// </summary>
    public void AssertHoldsNoDescriptorOf(string name)
    {
        string[] held = [.. FilesInUse().OpenFiles.Where(f => f.Contains(name, StringComparison.Ordinal))];
        Assert.True(held.Length == 0, $"the worker still holds {string.Join(", ", held)}");
    }

    /// <summary>The worker's log holds no stack trace and no unhandled exception.</summary>
    public void AssertNoStackTraces() => Assert.DoesNotContain(Lines, LooksLikeStackTrace);

    /// <summary>True for a log line holding (part of) a stack trace or an unhandled exception.</summary>
    public static bool LooksLikeStackTrace(string line)
        => StackFrame().IsMatch(line) || line.Contains("Unhandled exception", StringComparison.Ordinal)
            || line.Contains("--- End of stack trace", StringComparison.Ordinal);

    /// <summary>Lines logged for refusals of <paramref name="kind"/> after the first <paramref name="skip"/> lines.</summary>
    public int RefusalLines(string kind, int skip)
        => Lines.Skip(skip).Count(l => l.Contains($"Data plane refused a call ({kind},", StringComparison.Ordinal));

    /// <summary>What the worker maps (every mapped path; the paths it maps shared AND writable) and holds open (from /proc).</summary>
    public (string[] Mappings, string[] WritableShared, string[] OpenFiles) FilesInUse()
    {
        int pid = Process.ProcessId;
        var maps = File.ReadAllLines($"/proc/{pid}/maps")
            .Select(l => l.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 5)
            .Select(f => (Perms: f[1], Path: f.Length == 6 ? f[5].Trim() : ""))
            .ToArray();
        var shared = maps.Where(m => m.Perms == "rw-s").Select(m => m.Path).ToArray();
        var open = new List<string>();
        foreach (string fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target)
                {
                    open.Add(target);
                }
            }
            catch (IOException)
            {
                // Closed meanwhile.
            }
        }
        return ([.. maps.Select(m => m.Path)], shared, [.. open]);
    }

    /// <summary>Descriptors the worker holds open.</summary>
    public int OpenDescriptors() => Directory.EnumerateFileSystemEntries($"/proc/{Process.ProcessId}/fd").Count();

    /// <summary>A sealed-as-required memfd of <paramref name="size"/> bytes (or with other <paramref name="seals"/>; null = not sealable).</summary>
    internal static SafeFileHandle Memfd(long size, int? seals = UnixInterop.SealShrink | UnixInterop.SealGrow | UnixInterop.SealSeal)
    {
        int fd = UnixInterop.MemfdCreate("hostile", UnixInterop.MfdCloexec | (seals is null ? 0 : UnixInterop.MfdAllowSealing));
        Assert.True(fd >= 0, UnixInterop.LastError());
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        Assert.Equal(0, UnixInterop.Ftruncate(fd, size));
        if (seals is { } s && s != 0)
        {
            Assert.Equal(0, UnixInterop.Fcntl(fd, UnixInterop.FAddSeals, s));
        }
        return handle;
    }

    // A frame of a .NET stack trace: "at Namespace.Type.Method(", generic and nested names included.
    [GeneratedRegex(@"\bat [A-Za-z_][\w.`+<>\[\],|]*\(")]
    private static partial Regex StackFrame();
}

/// <summary>A hostile worker whose session table is small (8), for the flood tests.</summary>
public sealed class SmallSessionTableWorker : HostileWorker
{
    public const int Sessions = 8;

    protected override IEnumerable<string> ExtraArguments => ["--ExpertWorker:MaxSessions", Sessions.ToString(System.Globalization.CultureInfo.InvariantCulture)];
}

/// <summary>A session with its ring attached and mapped, and a Dispatch stream (<see cref="HostileWorker.AttachAsync"/>).</summary>
public sealed record AttachedSession(HelloReply Hello, SafeFileHandle Fd, SharedRing Ring,
    AsyncDuplexStreamingCall<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> Call) : IDisposable
{
    public void Dispose()
    {
        Call.Dispose();
        Ring.Dispose();
        Fd.Dispose();
    }
}
