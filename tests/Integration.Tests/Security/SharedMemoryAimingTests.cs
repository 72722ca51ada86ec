using System.Runtime.InteropServices;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.Core;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// A client holding the right credential cannot make the worker touch any file outside its own transport memory: a
/// path in the old offer (a file, a symlink in /dev/shm, /proc entries) is never opened; every descriptor passed at
/// the rendezvous that is not a sealed, read-write memfd of exactly the announced size (another file, /dev/zero,
/// /proc/self/mem, a read-only reopen, unsealed, shrinkable or write-sealed memfds, a smaller or larger one, none, two)
/// is refused and closed; a nonce works once and only for its session; offsets are checked against the sealed size.
/// After all of it the worker maps nothing shared but memfds and holds no victim file open.
/// </summary>
[Trait("Category", "Integration")]
public sealed class SharedMemoryAimingTests : IClassFixture<HostileWorker>, IDisposable
{
    private const int VictimBytes = 1 << 20;
    private readonly HostileWorker _worker;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"hostile-{Guid.NewGuid():N}");
    private readonly string _victim;
    private readonly byte[] _victimBytes;

    public SharedMemoryAimingTests(HostileWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _worker.Log.Output = output;
        Directory.CreateDirectory(_dir);
        _victim = Path.Combine(_dir, "victim.bin");
        _victimBytes = new byte[VictimBytes];
        new Random(1).NextBytes(_victimBytes);
        File.WriteAllBytes(_victim, _victimBytes);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private void AssertVictimUntouched(params string[] names)
    {
        Assert.Equal(_victimBytes, File.ReadAllBytes(_victim));
        var (mapped, writable, open) = _worker.FilesInUse();
        foreach (string name in names.Append(_victim))
        {
            Assert.DoesNotContain(mapped, m => m.Contains(name, StringComparison.Ordinal));
            Assert.DoesNotContain(open, f => f.Contains(name, StringComparison.Ordinal));
        }
        // Everything the worker can write through a shared mapping is anonymous memory (memfds: the rings, the runtime's
        // own double mapping of code).
        Assert.All(writable, m => Assert.True(m.StartsWith("/memfd:", StringComparison.Ordinal) || m.Length == 0 || m == "/dev/zero (deleted)", $"shared writable mapping of '{m}'"));
    }

    // Asks for rows [offset, offset + length) of the session's ring; returns the status.
    private async Task<(int Code, string Detail)> SharedRowsAsync(string session, ulong offset, ulong length, int rows = 2)
    {
        var (h, _) = _worker.Valid(rows);
        h.SharedRows = new SharedRows { Offset = offset, Length = length };
        try
        {
            using var reply = await _worker.Channel.CreateCallInvoker().AsyncUnaryCall(ExpertWorkerMethods.DispatchOnce, null,
                new CallOptions(_worker.Headers(session: session), DateTime.UtcNow.AddSeconds(20)), new TensorFrame<ExpertRequest>(h, ReadOnlyMemory<byte>.Empty));
            return (reply.Header.Status.Code, "");
        }
        catch (RpcException ex)
        {
            return ((int)ex.StatusCode, ex.Status.Detail);
        }
    }

    public static TheoryData<string> LegacyTargets => new() { "file", "symlinkInDevShm", "procSelfMem", "procSelfFd" };

    /// <summary>The pre-1.2 offer named a path the worker opened read-write. Its field is reserved now; whatever it
    /// names, the worker opens nothing and answers inline.</summary>
    [LinuxTheory]
    [MemberData(nameof(LegacyTargets))]
    public async Task LegacyPathOffer_IsNeverOpened(string target)
    {
        string link = $"/dev/shm/distributed-hostile-{Guid.NewGuid():N}";
        string path = target switch
        {
            "file" => _victim,
            "symlinkInDevShm" => link,
            "procSelfMem" => "/proc/self/mem",
            _ => "/proc/self/fd/1",
        };
        if (target == "symlinkInDevShm")
        {
            File.CreateSymbolicLink(link, _victim);
        }
        try
        {
            // SharedRingOffer { path = 1 (reserved now), size_bytes = 2, host_id = 3 }, offered with the old transport value 2.
            var offer = new MemoryStream();
            var w = new CodedOutputStream(offer);
            w.WriteTag(1, WireFormat.WireType.LengthDelimited);
            w.WriteString(path);
            w.WriteTag(2, WireFormat.WireType.Varint);
            w.WriteUInt64(VictimBytes);
            w.WriteTag(3, WireFormat.WireType.LengthDelimited);
            w.WriteString(SharedRing.LocalHostId);
            w.Flush();
            var hello = new HelloRequest { ProtocolMajor = 1, ProtocolMinor = 1, ModelFingerprint = _worker.Model.Fingerprint, CoordinatorId = "legacy" };
            hello.Transports.Add((RowTransport)2);
            hello.Transports.Add(RowTransport.Inline);
            var bytes = new MemoryStream();
            hello.WriteTo(bytes);
            var tail = new CodedOutputStream(bytes);
            tail.WriteTag(6, WireFormat.WireType.LengthDelimited);
            tail.WriteBytes(ByteString.CopyFrom(offer.ToArray()));
            tail.Flush();
            var raw = new Method<byte[], HelloReply>(MethodType.Unary, ExpertWorkerMethods.ServiceName, "Hello",
                Marshallers.Create((byte[] b) => b, b => b), Marshallers.Create((HelloReply r) => r.ToByteArray(), HelloReply.Parser.ParseFrom));
            var reply = await _worker.Channel.CreateCallInvoker().AsyncUnaryCall(raw, null, new CallOptions(_worker.Headers(), DateTime.UtcNow.AddSeconds(20)), bytes.ToArray());
            Assert.Equal(RowTransport.Inline, reply.Transport);
            Assert.Null(reply.SharedRing);
            var (code, detail) = await SharedRowsAsync(reply.SessionId, 0, (ulong)(2 * _worker.Model.HiddenSize * 4));
            Assert.Equal((int)StatusCode.InvalidArgument, code);
            Assert.Contains("shared_rows", detail);
            AssertVictimUntouched(link);
            await _worker.AssertAliveAsync();
            _worker.AssertNoStackTraces();
        }
        finally
        {
            File.Delete(link);
        }
    }

    public static TheoryData<string, string> ForeignDescriptors => new()
    {
        { "regularFile", "" },
        { "devShmFile", "lack F_SEAL_SHRINK" },
        { "devZero", "" },
        { "procSelfMem", "not anonymous shared memory" },
        { "readOnlyReopen", "not open read-write" },
        { "unsealable", "lack F_SEAL_SHRINK" },
        { "unsealed", "lack F_SEAL_SHRINK" },
        { "shrinkable", "lack F_SEAL_SHRINK" },
        { "sealsNotFrozen", "lack F_SEAL_SHRINK and F_SEAL_SEAL" },
        { "writeSealed", "forbid writing" },
        { "smaller", "not the" },
        { "larger", "not the" },
        { "none", "0 descriptors" },
        { "two", "2 descriptors" },
    };

    [LinuxTheory]
    [MemberData(nameof(ForeignDescriptors))]
    public async Task ForeignDescriptor_IsRefusedAndClosed_AndNothingIsWritten(string kind, string reason)
    {
        const long Ring = 1 << 20;
        const int Sealed = UnixInterop.SealShrink | UnixInterop.SealGrow | UnixInterop.SealSeal;
        string shmFile = $"/dev/shm/distributed-hostile-{Guid.NewGuid():N}";
        var owned = new List<SafeHandle>();
        T Own<T>(T handle)
            where T : SafeHandle
        {
            owned.Add(handle);
            return handle;
        }
        try
        {
            var hello = await _worker.HelloAsync(ringBytes: Ring);
            Assert.Equal(RowTransport.SharedMemoryFd, hello.Transport);
            List<SafeHandle> offered = kind switch
            {
                "regularFile" => [Own(File.OpenHandle(_victim, FileMode.Open, FileAccess.ReadWrite))],
                "devShmFile" => [Own(File.OpenHandle(shmFile, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.None, Ring))],
                "devZero" => [Own(File.OpenHandle("/dev/zero", FileMode.Open, FileAccess.ReadWrite))],
                "procSelfMem" => [Own(File.OpenHandle("/proc/self/mem", FileMode.Open, FileAccess.ReadWrite))],
                "readOnlyReopen" => [Own(File.OpenHandle($"/proc/self/fd/{Own(HostileWorker.Memfd(Ring)).DangerousGetHandle()}", FileMode.Open, FileAccess.Read))],
                "unsealable" => [Own(HostileWorker.Memfd(Ring, null))],
                "unsealed" => [Own(HostileWorker.Memfd(Ring, 0))],
                "shrinkable" => [Own(HostileWorker.Memfd(Ring, UnixInterop.SealGrow | UnixInterop.SealSeal))],
                "sealsNotFrozen" => [Own(HostileWorker.Memfd(Ring, UnixInterop.SealShrink | UnixInterop.SealGrow))],
                "writeSealed" => [Own(HostileWorker.Memfd(Ring, Sealed | UnixInterop.SealWrite))],
                "smaller" => [Own(HostileWorker.Memfd(Ring / 2))],
                "larger" => [Own(HostileWorker.Memfd(Ring * 2))],
                "none" => [],
                _ => [Own(HostileWorker.Memfd(Ring)), Own(HostileWorker.Memfd(Ring))],
            };
            var (attached, why) = await HostileWorker.OfferAsync(hello, offered);
            Assert.False(attached);
            Assert.Contains(reason, why);
            var (code, detail) = await SharedRowsAsync(hello.SessionId, 0, (ulong)(2 * _worker.Model.HiddenSize * 4));
            Assert.Equal((int)StatusCode.InvalidArgument, code);
            Assert.Contains("shared_rows", detail);
            AssertVictimUntouched(shmFile);
            _worker.AssertHoldsNoDescriptorOf("/memfd:hostile");
            await _worker.AssertAliveAsync();
            _worker.AssertNoStackTraces();
        }
        finally
        {
            owned.ForEach(h => h.Dispose());
            File.Delete(shmFile);
        }
    }

    /// <summary>Descriptors passed in refused offers are all closed: many offers do not grow the worker's descriptor table.</summary>
    [LinuxFact]
    public async Task RefusedOffers_LeakNoDescriptors()
    {
        int before = 0;
        for (int i = 0; i < 41; i++)
        {
            if (i == 1)
            {
                // After one round trip of everything involved (sockets, threads, crypto), so only leaks can grow the count.
                before = _worker.OpenDescriptors();
            }
            var hello = await _worker.HelloAsync();
            using var a = HostileWorker.Memfd(1 << 20, 0);
            using var b = HostileWorker.Memfd(1 << 20);
            var (attached, _) = await HostileWorker.OfferAsync(hello, i % 2 == 0 ? [a] : [a, b]);
            Assert.False(attached);
        }
        _worker.AssertDescriptorsAtMost(before + 4);
        await _worker.AssertAliveAsync();
    }

    [LinuxFact]
    public async Task Nonce_WorksOnce_AndOnlyForItsSession()
    {
        var a = await _worker.HelloAsync();
        var b = await _worker.HelloAsync();
        using var ring = HostileWorker.Memfd(1 << 20);
        var (stolen, why) = await HostileWorker.OfferAsync(a, [ring], b.SharedRing.Nonce.ToByteArray());
        Assert.False(stolen);
        Assert.Contains("wrong rendezvous nonce", why);
        (stolen, why) = await HostileWorker.OfferAsync(a, [ring]);
        Assert.False(stolen);
        Assert.Contains("already used", why);
        var (attached, _) = await HostileWorker.OfferAsync(b, [ring]);
        Assert.True(attached);
        (attached, why) = await HostileWorker.OfferAsync(b, [ring]);
        Assert.False(attached);
        Assert.Contains("already used", why);
        await _worker.AssertAliveAsync();
    }

    [LinuxFact]
    public async Task AttachedRing_EveryDescriptorIsCheckedAgainstItsSealedSize_AndItCannotBeResized()
    {
        const long Ring = 1 << 20;
        var hello = await _worker.HelloAsync(ringBytes: Ring);
        using var fd = HostileWorker.Memfd(Ring);
        var (attached, why) = await HostileWorker.OfferAsync(hello, [fd]);
        Assert.True(attached, why);
        int raw = (int)fd.DangerousGetHandle();
        Assert.NotEqual(0, UnixInterop.Ftruncate(raw, 4096));
        Assert.NotEqual(0, UnixInterop.Ftruncate(raw, Ring * 4));
        Assert.NotEqual(0, UnixInterop.Fcntl(raw, UnixInterop.FAddSeals, UnixInterop.SealWrite));

        ulong rowBytes = (ulong)(2 * _worker.Model.HiddenSize * 4);
        foreach (var (offset, length) in new (ulong, ulong)[]
        {
            ((ulong)Ring, rowBytes), ((ulong)Ring - rowBytes + 4, rowBytes), (ulong.MaxValue - 8, rowBytes), (0, ulong.MaxValue), (4096, rowBytes - 4),
        })
        {
            var (code, detail) = await SharedRowsAsync(hello.SessionId, offset, length);
            Assert.True(code == (int)StatusCode.InvalidArgument, $"[{offset}, +{length}): {code} {detail}");
        }

        // The same rows through the ring and inline give the same answer.
        var (h, payload) = _worker.Valid();
        using var mine = SharedRing.MapReceived(fd, Ring, Ring);
        Assert.True(mine.TryGetSpan(8192, (ulong)payload.Length, out var rows));
        payload.CopyTo(rows);
        h.SharedRows = new SharedRows { Offset = 8192, Length = (ulong)payload.Length };
        using (var reply = await _worker.Channel.CreateCallInvoker().AsyncUnaryCall(ExpertWorkerMethods.DispatchOnce, null,
            new CallOptions(_worker.Headers(session: hello.SessionId), DateTime.UtcNow.AddSeconds(20)), new TensorFrame<ExpertRequest>(h, ReadOnlyMemory<byte>.Empty)))
        {
            Assert.Equal(0, reply.Header.Status.Code);
            Assert.Equal(8192ul, reply.Header.SharedRows.Offset);
        }
        var inline = await _worker.AssertAliveAsync();
        Assert.True(mine.TryGetSpan(8192, (ulong)payload.Length, out var answer));
        Assert.Equal(inline, answer.ToArray());
        Assert.Contains(_worker.FilesInUse().WritableShared, m => m.StartsWith("/memfd:hostile", StringComparison.Ordinal));
        AssertVictimUntouched();
        _worker.AssertNoStackTraces();
    }

    [LinuxFact]
    public async Task ResizingAnAttachedRing_Fails_AndTheWorkerKeepsServingFromIt()
    {
        const long Ring = 1 << 20;
        using var session = await _worker.AttachAsync(Ring);
        var (hello, fd, ring, call) = (session.Hello, session.Fd, session.Ring, session.Call);
        var (h, p) = _worker.Valid(id: 1);
        ulong last = (ulong)(Ring - p.Length);
        var expected = await CrashAttemptTests.RoundTripAsync(call, ring, h, p, last);
        int raw = (int)fd.DangerousGetHandle();
        foreach (long size in new long[] { 0, 4096, Ring - 1, Ring + 4096 })
        {
            Assert.NotEqual(0, UnixInterop.Ftruncate(raw, size));
        }
        // The last bytes of the ring are still there for the worker: no SIGBUS, the same answer.
        h.RequestId = 2;
        Assert.Equal(expected, await CrashAttemptTests.RoundTripAsync(call, ring, h, p, last));
        await call.RequestStream.CompleteAsync();
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }
}
