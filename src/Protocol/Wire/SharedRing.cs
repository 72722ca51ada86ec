using System.Runtime.Versioning;
using Microsoft.Win32.SafeHandles;

namespace Distributed.Protocol.Wire;

/// <summary>
/// Anonymous shared memory for the same-host transport: a Linux memfd, sealed so that it can never shrink, mapped by
/// the coordinator that created it and by the worker it was passed to as a file descriptor (never by path: see
/// <see cref="RingRendezvous"/>). The coordinator places a request's rows at some [offset, offset + length) of the ring
/// and sends only that descriptor over gRPC; the worker reads the rows there and writes its output rows over them
/// (same size), then replies with the same descriptor. The coordinator owns allocation; the worker bounds-checks every
/// descriptor against the sealed size.
/// <para>Lifetime: the mapping is reference counted. The creator holds one reference, released by
/// <see cref="Dispose"/>; every user takes one with <see cref="TryAcquire"/> and gives it back with
/// <see cref="Release"/>. The memory is unmapped when the last reference goes, so a span handed out under a reference
/// stays valid however the ring's owner is torn down.</para>
/// </summary>
public sealed unsafe class SharedRing : IDisposable
{
    /// <summary>Smallest ring accepted (one page).</summary>
    public const long MinSize = 4096;

    /// <summary>Seals every ring carries: it cannot shrink (which would turn the peer's accesses into SIGBUS), cannot
    /// grow, and its seals cannot change any more (so no write seal can be added after the check).</summary>
    internal const int RequiredSeals = UnixInterop.SealShrink | UnixInterop.SealSeal;

    private readonly SafeFileHandle? _descriptor;
    private readonly byte* _base;
    private int _references = 1;
    private int _closing;

    private SharedRing(byte* mapped, long size, SafeFileHandle? descriptor)
    {
        _base = mapped;
        Size = size;
        _descriptor = descriptor;
    }

    /// <summary>True where the transport works: Linux (memfd, seals, SCM_RIGHTS).</summary>
    [SupportedOSPlatformGuard("linux")]
    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary>Bytes in the ring (its sealed size).</summary>
    public long Size { get; }

    /// <summary>Start of the mapping (the doorbell's queues address their words directly; callers hold a reference).</summary>
    internal byte* BaseAddress => _base;

    /// <summary>The memfd of a ring this process created (to pass to a peer); null for a ring received from one.</summary>
    internal SafeFileHandle? Descriptor => _descriptor;

    /// <summary>True once <see cref="Dispose"/> ran: no new reference is handed out.</summary>
    public bool IsClosing => Volatile.Read(ref _closing) != 0;

    /// <summary>
    /// Creates a ring of <paramref name="size"/> bytes: <c>memfd_create</c>, sized, sealed with
    /// <c>F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL</c>, mapped read-write.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> below <see cref="MinSize"/>.</exception>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="SharedRingException">A system call failed (the message names it and the errno).</exception>
    public static SharedRing CreateSealed(long size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, MinSize);
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("the shared-memory transport needs Linux (memfd, file seals, SCM_RIGHTS)");
        }
        int fd = UnixInterop.MemfdCreate("distributed-ring", UnixInterop.MfdCloexec | UnixInterop.MfdAllowSealing);
        if (fd < 0)
        {
            throw new SharedRingException($"memfd_create failed: {UnixInterop.LastError()}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (UnixInterop.Ftruncate(fd, size) != 0)
            {
                throw new SharedRingException($"sizing the ring to {size} bytes failed: {UnixInterop.LastError()}");
            }
            if (UnixInterop.Fcntl(fd, UnixInterop.FAddSeals, UnixInterop.SealShrink | UnixInterop.SealGrow | UnixInterop.SealSeal) != 0)
            {
                throw new SharedRingException($"sealing the ring failed: {UnixInterop.LastError()}");
            }
            return new SharedRing(Map(fd, size), size, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Maps a ring a peer passed as a file descriptor, after checking everything that could make using it unsafe:
    /// open read-write; on tmpfs (an anonymous memfd, not a file of some file system and not hugetlbfs, whose pool can
    /// run dry mid-access); sealed with <c>F_SEAL_SHRINK</c> and <c>F_SEAL_SEAL</c> and without a write seal (so its
    /// size can never drop under the mapping and nothing can change that afterwards); exactly
    /// <paramref name="expectedSize"/> bytes. The descriptor is not kept (the mapping keeps the memory alive); the
    /// caller still disposes <paramref name="descriptor"/>.
    /// </summary>
    /// <param name="descriptor">The received descriptor.</param>
    /// <param name="expectedSize">The size the peer announced in its handshake.</param>
    /// <param name="maxSize">Largest ring this process maps.</param>
    /// <exception cref="SharedRingException">The descriptor fails a check (the message says which) or mapping failed.</exception>
    public static SharedRing MapReceived(SafeFileHandle descriptor, ulong expectedSize, long maxSize)
    {
        ArgumentNullException.ThrowIfNull(descriptor);
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("the shared-memory transport needs Linux (memfd, file seals, SCM_RIGHTS)");
        }
        if (expectedSize < MinSize || expectedSize > (ulong)maxSize)
        {
            throw new SharedRingException($"a ring of {expectedSize} bytes is outside [{MinSize}, {maxSize}]");
        }
        bool added = false;
        try
        {
            descriptor.DangerousAddRef(ref added);
            int fd = (int)descriptor.DangerousGetHandle();
            int flags = UnixInterop.Fcntl(fd, UnixInterop.FGetfl, 0);
            if (flags < 0)
            {
                throw new SharedRingException($"the descriptor is unusable: {UnixInterop.LastError()}");
            }
            if ((flags & UnixInterop.OAccmode) != UnixInterop.ORdwr)
            {
                throw new SharedRingException("the descriptor is not open read-write");
            }
            byte* statfs = stackalloc byte[256];
            if (UnixInterop.Fstatfs(fd, statfs) != 0)
            {
                throw new SharedRingException($"fstatfs failed: {UnixInterop.LastError()}");
            }
            long type = *(long*)statfs;
            if (type != UnixInterop.TmpfsMagic)
            {
                throw new SharedRingException($"the descriptor is not anonymous shared memory (file system type 0x{type:x}, a memfd is tmpfs 0x{UnixInterop.TmpfsMagic:x})");
            }
            int seals = UnixInterop.Fcntl(fd, UnixInterop.FGetSeals, 0);
            if (seals < 0)
            {
                throw new SharedRingException($"the descriptor carries no seals (not a memfd created with MFD_ALLOW_SEALING): {UnixInterop.LastError()}");
            }
            if ((seals & RequiredSeals) != RequiredSeals)
            {
                throw new SharedRingException($"the memfd's seals 0x{seals:x} lack F_SEAL_SHRINK and F_SEAL_SEAL (it could shrink under the mapping)");
            }
            if ((seals & (UnixInterop.SealWrite | UnixInterop.SealFutureWrite)) != 0)
            {
                throw new SharedRingException($"the memfd's seals 0x{seals:x} forbid writing");
            }
            long length = RandomAccess.GetLength(descriptor);
            if (length != (long)expectedSize)
            {
                throw new SharedRingException($"the memfd holds {length} bytes, not the {expectedSize} announced");
            }
            return new SharedRing(Map(fd, length), length, descriptor: null);
        }
        finally
        {
            if (added)
            {
                descriptor.DangerousRelease();
            }
        }
    }

    private static byte* Map(int fd, long size)
    {
        void* p = UnixInterop.Mmap(null, (nuint)size, UnixInterop.ProtRead | UnixInterop.ProtWrite, UnixInterop.MapShared, fd, 0);
        if (p == (void*)-1)
        {
            throw new SharedRingException($"mapping {size} bytes failed: {UnixInterop.LastError()}");
        }
        return (byte*)p;
    }

    /// <summary>
    /// Takes a reference that keeps the mapping alive until <see cref="Release"/>; false once the ring is closing or
    /// gone (then nothing may be read from it).
    /// </summary>
    public bool TryAcquire()
    {
        if (IsClosing)
        {
            return false;
        }
        while (true)
        {
            int current = Volatile.Read(ref _references);
            if (current == 0)
            {
                return false;
            }
            if (Interlocked.CompareExchange(ref _references, current + 1, current) == current)
            {
                return true;
            }
        }
    }

    /// <summary>Gives back a reference from <see cref="TryAcquire"/>; the last one unmaps the ring.</summary>
    public void Release()
    {
        int left = Interlocked.Decrement(ref _references);
        if (left == 0)
        {
            UnixInterop.Munmap(_base, (nuint)Size);
            _descriptor?.Dispose();
        }
        else if (left < 0)
        {
            throw new InvalidOperationException("SharedRing released more often than acquired");
        }
    }

    /// <summary>
    /// The bytes [offset, offset + length), or false when the range is not inside the ring or the ring is gone. The
    /// caller must hold a reference (<see cref="TryAcquire"/>, or be the creator before <see cref="Dispose"/>) for as
    /// long as it uses the span.
    /// </summary>
    public bool TryGetSpan(ulong offset, ulong length, out Span<byte> span)
    {
        if (offset > (ulong)Size || length > (ulong)Size - offset || length > int.MaxValue || Volatile.Read(ref _references) == 0)
        {
            span = default;
            return false;
        }
        span = new Span<byte>(_base + offset, (int)length);
        return true;
    }

    /// <summary>Identity of this machine for same-host checks (host name and kernel boot id, else the host name).</summary>
    public static string LocalHostId { get; } = ReadHostId();

    private static string ReadHostId()
    {
        try
        {
            if (OperatingSystem.IsLinux() && File.Exists("/proc/sys/kernel/random/boot_id"))
            {
                return Environment.MachineName + "/" + File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
            }
        }
        catch (IOException)
        {
        }
        return Environment.MachineName;
    }

    /// <summary>Drops the creator's reference: no new reference is handed out, and the ring is unmapped once the
    /// references still held are given back.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closing, 1) == 0)
        {
            Release();
        }
    }
}

/// <summary>A shared ring could not be created, or a received one failed a safety check (the message says which).</summary>
public sealed class SharedRingException(string message) : IOException(message);
