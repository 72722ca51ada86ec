using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Distributed.Protocol.Wire;

/// <summary>
/// How a coordinator hands its <see cref="SharedRing"/> to a worker on the same host: as a file descriptor over a Unix
/// domain socket the WORKER created (in a private 0700 directory it chose; its path comes back in the authenticated
/// <c>Hello</c> reply), bound to the Hello session by a one-time nonce. The worker never opens a path a peer names.
/// <para>Wire format (<c>SOCK_SEQPACKET</c>, one message each way). Request, 68 bytes: the magic <c>"DRR1"</c>, the
/// session id (32 lower-case hex characters, as Hello returned it), the 32-byte nonce; one <c>SCM_RIGHTS</c> control
/// message carrying exactly one descriptor (the memfd). Reply: one status byte (0 attached, 1 refused), then the
/// reason as UTF-8 (at most <see cref="MaxReasonBytes"/> bytes).</para>
/// </summary>
public static class RingRendezvous
{
    /// <summary>Bytes of the one-time nonce.</summary>
    public const int NonceBytes = 32;

    /// <summary>Characters of a session id (a GUID in "N" format).</summary>
    public const int SessionIdLength = 32;

    /// <summary>Longest refusal reason sent back.</summary>
    public const int MaxReasonBytes = 256;

    internal const int RequestBytes = 4 + SessionIdLength + NonceBytes;

    internal static ReadOnlySpan<byte> Magic => "DRR1"u8;

    /// <summary>
    /// Passes <paramref name="ring"/>'s descriptor to the worker listening at <paramref name="socketPath"/> for session
    /// <paramref name="sessionId"/> and waits for its verdict.
    /// </summary>
    /// <exception cref="SharedRingException">The worker refused (its reason), or the socket failed (the reason).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired.</exception>
    public static async Task AttachAsync(string socketPath, string sessionId, ReadOnlyMemory<byte> nonce, SharedRing ring, TimeSpan timeout,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(ring);
        if (ring.Descriptor is not { } descriptor)
        {
            throw new ArgumentException("only a ring this process created can be passed on", nameof(ring));
        }
        if (sessionId.Length != SessionIdLength || !IsLowerHex(sessionId))
        {
            throw new SharedRingException($"session id '{sessionId}' is not {SessionIdLength} lower-case hex characters");
        }
        if (nonce.Length != NonceBytes)
        {
            throw new SharedRingException($"the rendezvous nonce has {nonce.Length} bytes, not {NonceBytes}");
        }
        var request = new byte[RequestBytes];
        Magic.CopyTo(request);
        Encoding.ASCII.GetBytes(sessionId, request.AsSpan(4));
        nonce.Span.CopyTo(request.AsSpan(4 + SessionIdLength));
        var (attached, reason) = await ExchangeAsync(socketPath, request, [descriptor], timeout, cancellationToken).ConfigureAwait(false);
        if (!attached)
        {
            throw new SharedRingException("the worker refused the ring: " + reason);
        }
    }

    /// <summary>One rendezvous exchange with any message and any descriptors (the tests send malformed ones).</summary>
    internal static async Task<(bool Attached, string Reason)> ExchangeAsync(string socketPath, byte[] request, IReadOnlyList<SafeHandle> descriptors,
        TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var timeoutSource = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeoutSource.CancelAfter(timeout);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), timeoutSource.Token).ConfigureAwait(false);
            SendWithDescriptors(socket, request, descriptors);
            var reply = new byte[1 + MaxReasonBytes];
            int n = await socket.ReceiveAsync(reply, SocketFlags.None, timeoutSource.Token).ConfigureAwait(false);
            if (n == 0)
            {
                throw new SharedRingException("the worker closed the rendezvous socket without an answer (busy or shutting down)");
            }
            return (reply[0] == 0, Encoding.UTF8.GetString(reply, 1, n - 1));
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new SharedRingException($"the ring rendezvous at {socketPath} did not answer within {timeout.TotalSeconds:F1} s");
        }
        catch (SocketException ex)
        {
            throw new SharedRingException($"the ring rendezvous at {socketPath} failed: {ex.SocketErrorCode} {ex.Message}");
        }
    }

    private static unsafe void SendWithDescriptors(Socket socket, byte[] payload, IReadOnlyList<SafeHandle> descriptors)
    {
        bool socketRef = false;
        var referenced = new List<SafeHandle>(descriptors.Count);
        try
        {
            socket.SafeHandle.DangerousAddRef(ref socketRef);
            int space = descriptors.Count == 0 ? 0 : UnixInterop.CmsgSpace(descriptors.Count * sizeof(int));
            byte* control = stackalloc byte[Math.Max(space, 1)];
            if (space > 0)
            {
                new Span<byte>(control, space).Clear();
                var header = (UnixInterop.CmsgHdr*)control;
                header->Length = (nuint)(UnixInterop.CmsgHeaderSize + descriptors.Count * sizeof(int));
                header->Level = UnixInterop.SolSocket;
                header->Type = UnixInterop.ScmRights;
                for (int i = 0; i < descriptors.Count; i++)
                {
                    bool added = false;
                    descriptors[i].DangerousAddRef(ref added);
                    referenced.Add(descriptors[i]);
                    ((int*)(control + UnixInterop.CmsgHeaderSize))[i] = (int)descriptors[i].DangerousGetHandle();
                }
            }
            fixed (byte* data = payload)
            {
                var iov = new UnixInterop.IoVec { Base = data, Length = (nuint)payload.Length };
                var message = new UnixInterop.MsgHdr { Iov = &iov, IovLength = 1, Control = space > 0 ? control : null, ControlLength = (nuint)space };
                nint sent;
                do
                {
                    sent = UnixInterop.SendMsg(socket.SafeHandle.DangerousGetHandle(), &message, UnixInterop.MsgNosignal | UnixInterop.MsgDontwait);
                }
                while (sent < 0 && Marshal.GetLastPInvokeError() == UnixInterop.Eintr);
                if (sent != payload.Length)
                {
                    throw new SharedRingException($"sending the ring descriptor failed: {(sent < 0 ? UnixInterop.LastError() : $"{sent} of {payload.Length} bytes sent")}");
                }
            }
        }
        finally
        {
            foreach (var d in referenced)
            {
                d.DangerousRelease();
            }
            if (socketRef)
            {
                socket.SafeHandle.DangerousRelease();
            }
        }
    }

    internal static bool IsLowerHex(ReadOnlySpan<char> text)
    {
        foreach (char c in text)
        {
            if (c is not ((>= '0' and <= '9') or (>= 'a' and <= 'f')))
            {
                return false;
            }
        }
        return true;
    }
}

/// <summary>One ring offered over the rendezvous socket, for the listener's owner to verify and attach.</summary>
public sealed class RingAttachRequest
{
    internal RingAttachRequest(string sessionId, byte[] nonce, SafeFileHandle descriptor, int peerPid, uint peerUid)
    {
        SessionId = sessionId;
        Nonce = nonce;
        Descriptor = descriptor;
        PeerPid = peerPid;
        PeerUid = peerUid;
    }

    /// <summary>The Hello session the ring is for (32 lower-case hex characters; checked).</summary>
    public string SessionId { get; }

    /// <summary>The nonce presented (<see cref="RingRendezvous.NonceBytes"/> bytes; unchecked: compare in constant time).</summary>
    public ReadOnlyMemory<byte> Nonce { get; }

    /// <summary>The received descriptor, unverified (<see cref="SharedRing.MapReceived"/> checks it). The listener closes
    /// it after the callback returns.</summary>
    public SafeFileHandle Descriptor { get; }

    /// <summary>Process id of the peer (<c>SO_PEERCRED</c>).</summary>
    public int PeerPid { get; }

    /// <summary>User id of the peer (<c>SO_PEERCRED</c>).</summary>
    public uint PeerUid { get; }
}

/// <summary>
/// The worker's end of <see cref="RingRendezvous"/>: a <c>SOCK_SEQPACKET</c> Unix socket in a fresh private directory
/// (mode 0700, random name; directories that killed workers left behind are removed first, see
/// <see cref="RemoveStale"/>), accepting peers of this process's user (or root) only, each for at most
/// <see cref="HandshakeTimeout"/>, at most <see cref="MaxConcurrent"/> at once (more are closed unanswered). Every
/// received descriptor is closed after the owner's callback ran; a message carrying anything but exactly one
/// descriptor, or of the wrong size or magic, is refused without calling back.
/// </summary>
public sealed partial class RingRendezvousListener : IAsyncDisposable
{
    /// <summary>Rendezvous handled at once.</summary>
    public const int MaxConcurrent = 8;

    /// <summary>Longest a peer may take to send its message.</summary>
    public static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Longest socket path Linux accepts (<c>sun_path</c> minus the terminator).</summary>
    public const int MaxSocketPathLength = 107;

    private readonly Socket _listener;
    private readonly Func<RingAttachRequest, string?> _attach;
    private readonly Action<string> _refused;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _slots = new(MaxConcurrent, MaxConcurrent);
    private readonly Task _acceptLoop;

    private RingRendezvousListener(string directory, string socketPath, Socket listener, Func<RingAttachRequest, string?> attach, Action<string> refused)
    {
        DirectoryPath = directory;
        SocketPath = socketPath;
        _listener = listener;
        _attach = attach;
        _refused = refused;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The private directory holding the socket.</summary>
    public string DirectoryPath { get; }

    /// <summary>The socket's path (what Hello advertises).</summary>
    public string SocketPath { get; }

    /// <summary>
    /// Creates a private directory under <paramref name="baseDirectory"/> and listens there.
    /// </summary>
    /// <param name="baseDirectory">Where the private directory goes (e.g. <c>$XDG_RUNTIME_DIR</c> or <c>/tmp</c>).</param>
    /// <param name="attach">Verifies and attaches one ring; returns null when attached, else the refusal reason sent
    /// back. Runs on the thread pool; must not throw.</param>
    /// <param name="refused">Told the reason of every refusal and failure (for a rate-limited log).</param>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="IOException">The directory or socket could not be created safely (the message says why).</exception>
    public static RingRendezvousListener Start(string baseDirectory, Func<RingAttachRequest, string?> attach, Action<string> refused)
    {
        ArgumentNullException.ThrowIfNull(attach);
        ArgumentNullException.ThrowIfNull(refused);
        if (!SharedRing.IsSupported)
        {
            throw new PlatformNotSupportedException("the shared-memory transport needs Linux (memfd, file seals, SCM_RIGHTS)");
        }
        RemoveStale(baseDirectory, TimeSpan.FromMinutes(1));
        string directory = Path.Combine(Path.GetFullPath(baseDirectory),
            $"{DirectoryPrefix}{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}");
        string socketPath = Path.Combine(directory, "ring.sock");
        if (socketPath.Length > MaxSocketPathLength)
        {
            throw new IOException($"the rendezvous socket path '{socketPath}' is longer than {MaxSocketPathLength} characters; choose a shorter directory");
        }
        const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        var created = Directory.CreateDirectory(directory, Private);
        if (created.LinkTarget is not null || File.GetUnixFileMode(directory) != Private || created.EnumerateFileSystemInfos().Any())
        {
            throw new IOException($"'{directory}' is not a fresh private directory (mode 0700, empty, not a link)");
        }
        var socket = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(socketPath));
            socket.Listen(MaxConcurrent * 2);
        }
        catch
        {
            socket.Dispose();
            TryDelete(directory, socketPath);
            throw;
        }
        return new RingRendezvousListener(directory, socketPath, socket, attach, refused);
    }

    /// <summary>
    /// Removes the rendezvous directories that workers killed without a shutdown (SIGKILL, a crash) left under
    /// <paramref name="baseDirectory"/>: a directory named like this listener's, not a link, last changed more than
    /// <paramref name="minimumAge"/> ago, whose process id is not running here, and whose socket nobody listens on
    /// (connecting is refused, or the socket is gone). Best effort: what it cannot inspect or remove stays.
    /// </summary>
    /// <returns>How many directories were removed.</returns>
    internal static int RemoveStale(string baseDirectory, TimeSpan minimumAge)
    {
        string[] candidates;
        try
        {
            candidates = Directory.GetDirectories(baseDirectory, DirectoryPrefix + "*");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
        int removed = 0;
        foreach (string directory in candidates)
        {
            try
            {
                var match = StaleName().Match(Path.GetFileName(directory));
                var info = new DirectoryInfo(directory);
                if (!match.Success || info.LinkTarget is not null || DateTime.UtcNow - info.LastWriteTimeUtc < minimumAge
                    || Directory.Exists($"/proc/{match.Groups[1].Value}"))
                {
                    continue;
                }
                string socketPath = Path.Combine(directory, "ring.sock");
                if (File.Exists(socketPath))
                {
                    // A worker of another pid namespace sharing this directory would still be listening: keep it.
                    using var probe = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
                    try
                    {
                        probe.Connect(new UnixDomainSocketEndPoint(socketPath));
                        continue;
                    }
                    catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
                    {
                    }
                    File.Delete(socketPath);
                }
                Directory.Delete(directory);
                removed++;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or SocketException)
            {
                // Not ours to judge or not removable: leave it.
            }
        }
        return removed;
    }

    private const string DirectoryPrefix = "distributed-worker-";

    [System.Text.RegularExpressions.GeneratedRegex("^distributed-worker-([0-9]+)-[0-9a-f]{16}$")]
    private static partial System.Text.RegularExpressions.Regex StaleName();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket peer;
            try
            {
                peer = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                _refused($"accept failed: {ex.SocketErrorCode}");
                continue;
            }
            if (!_slots.Wait(0))
            {
                _refused($"more than {MaxConcurrent} rendezvous at once; closed one unanswered");
                peer.Dispose();
                continue;
            }
            _ = Task.Run(async () =>
            {
                try
                {
                    await HandleAsync(peer).ConfigureAwait(false);
                }
                finally
                {
                    peer.Dispose();
                    _slots.Release();
                }
            });
        }
    }

    private async Task HandleAsync(Socket peer)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(HandshakeTimeout);
        string? reason;
        try
        {
            reason = CheckPeer(peer, out int pid, out uint uid);
            if (reason is null)
            {
                // Wait until the message is there without consuming it, then take it with its descriptors.
                await peer.ReceiveAsync(new byte[1], SocketFlags.Peek, timeout.Token).ConfigureAwait(false);
                reason = Receive(peer, pid, uid);
            }
        }
        catch (OperationCanceledException)
        {
            reason = $"no message within {HandshakeTimeout.TotalSeconds:F0} s";
        }
        catch (SocketException ex)
        {
            reason = $"socket error {ex.SocketErrorCode}";
        }
        if (reason is not null)
        {
            _refused(reason);
        }
        try
        {
            var reply = new byte[1 + RingRendezvous.MaxReasonBytes];
            reply[0] = reason is null ? (byte)0 : (byte)1;
            int n = reason is null ? 0 : Encoding.UTF8.GetBytes(reason.AsSpan(0, Math.Min(reason.Length, RingRendezvous.MaxReasonBytes / 4)), reply.AsSpan(1));
            await peer.SendAsync(reply.AsMemory(0, 1 + n), SocketFlags.None, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The peer went away; nothing to tell it.
        }
    }

    private static unsafe string? CheckPeer(Socket peer, out int pid, out uint uid)
    {
        var cred = default(UnixInterop.UCred);
        uint length = (uint)sizeof(UnixInterop.UCred);
        if (UnixInterop.GetSockOpt(peer.SafeHandle.DangerousGetHandle(), UnixInterop.SolSocket, UnixInterop.SoPeercred, &cred, &length) != 0)
        {
            pid = 0;
            uid = uint.MaxValue;
            return $"SO_PEERCRED failed: {UnixInterop.LastError()}";
        }
        pid = cred.Pid;
        uid = cred.Uid;
        uint self = UnixInterop.GetEffectiveUserId();
        return cred.Uid == self || cred.Uid == 0 ? null : $"peer pid {cred.Pid} runs as uid {cred.Uid}, not this worker's uid {self}";
    }

    // One recvmsg: the 68-byte request and room for up to 8 descriptors, so that a message carrying several is seen
    // (and every one of them closed) rather than silently truncated.
    private unsafe string? Receive(Socket peer, int pid, uint uid)
    {
        const int MaxDescriptors = 8;
        int space = UnixInterop.CmsgSpace(MaxDescriptors * sizeof(int));
        byte* control = stackalloc byte[space];
        new Span<byte>(control, space).Clear();
        var data = new byte[RingRendezvous.RequestBytes + 1];
        var received = new List<SafeFileHandle>();
        try
        {
            nint n;
            int flags;
            fixed (byte* p = data)
            {
                var iov = new UnixInterop.IoVec { Base = p, Length = (nuint)data.Length };
                var message = new UnixInterop.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = (nuint)space };
                n = UnixInterop.RecvMsg(peer.SafeHandle.DangerousGetHandle(), &message, UnixInterop.MsgDontwait | UnixInterop.MsgCmsgCloexec);
                if (n < 0)
                {
                    return $"recvmsg failed: {UnixInterop.LastError()}";
                }
                flags = message.Flags;
                // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR) and take ownership of every descriptor.
                byte* end = control + (int)Math.Min((ulong)space, (ulong)message.ControlLength);
                for (byte* c = control; c + UnixInterop.CmsgHeaderSize <= end;)
                {
                    var header = (UnixInterop.CmsgHdr*)c;
                    if (header->Length < (nuint)UnixInterop.CmsgHeaderSize || c + (long)header->Length > end)
                    {
                        break;
                    }
                    if (header->Level == UnixInterop.SolSocket && header->Type == UnixInterop.ScmRights)
                    {
                        int count = (int)(header->Length - UnixInterop.CmsgHeaderSize) / sizeof(int);
                        for (int i = 0; i < count; i++)
                        {
                            received.Add(new SafeFileHandle(((int*)(c + UnixInterop.CmsgHeaderSize))[i], ownsHandle: true));
                        }
                    }
                    c += (int)((header->Length + 7) & ~(nuint)7);
                }
            }
            if ((flags & (UnixInterop.MsgTrunc | UnixInterop.MsgCtrunc)) != 0)
            {
                return "the message or its descriptors were truncated";
            }
            if (n != RingRendezvous.RequestBytes || !data.AsSpan(0, 4).SequenceEqual(RingRendezvous.Magic))
            {
                return $"malformed message ({n} bytes)";
            }
            if (received.Count != 1)
            {
                return $"{received.Count} descriptors sent; exactly one is accepted";
            }
            string sessionId = Encoding.ASCII.GetString(data, 4, RingRendezvous.SessionIdLength);
            if (!RingRendezvous.IsLowerHex(sessionId))
            {
                return "malformed session id";
            }
            var nonce = data.AsSpan(4 + RingRendezvous.SessionIdLength, RingRendezvous.NonceBytes).ToArray();
            try
            {
                return _attach(new RingAttachRequest(sessionId, nonce, received[0], pid, uid));
            }
            catch (Exception ex) when (ex is IOException or ArgumentException or InvalidOperationException)
            {
                return ex.Message;
            }
        }
        finally
        {
            foreach (var fd in received)
            {
                fd.Dispose();
            }
        }
    }

    private static void TryDelete(string directory, string socketPath)
    {
        try
        {
            File.Delete(socketPath);
            Directory.Delete(directory);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            await _acceptLoop.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        TryDelete(DirectoryPath, SocketPath);
    }
}
