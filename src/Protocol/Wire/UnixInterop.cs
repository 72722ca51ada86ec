using System.Runtime.InteropServices;

namespace Distributed.Protocol.Wire;

/// <summary>
/// The few Linux calls the same-host transport needs and .NET does not expose: sealed anonymous memory
/// (<c>memfd_create</c>, <c>fcntl(F_ADD_SEALS/F_GET_SEALS)</c>), mapping it (<c>mmap</c>), and passing its descriptor
/// over a Unix socket (<c>sendmsg</c>/<c>recvmsg</c> with <c>SCM_RIGHTS</c>, <c>SO_PEERCRED</c>). Constants and struct
/// layouts are those of the Linux LP64 ABI (x86-64 and arm64 agree). Tmds.LibC 0.5.0 (the only served binding) predates
/// <c>LibraryImport</c>, so the project keeps these dozen declarations itself, as it does for CUDA.
/// </summary>
internal static unsafe partial class UnixInterop
{
    private const string Lib = "libc";

    public const uint MfdCloexec = 0x1;
    public const uint MfdAllowSealing = 0x2;

    public const int FGetfl = 3;
    public const int FAddSeals = 1033;
    public const int FGetSeals = 1034;
    public const int OAccmode = 3;
    public const int ORdwr = 2;

    public const int SealSeal = 0x1;
    public const int SealShrink = 0x2;
    public const int SealGrow = 0x4;
    public const int SealWrite = 0x8;
    public const int SealFutureWrite = 0x10;

    public const int ProtRead = 0x1;
    public const int ProtWrite = 0x2;
    public const int MapShared = 0x1;

    public const int SolSocket = 1;
    public const int ScmRights = 1;
    public const int SoPeercred = 17;

    public const int MsgCtrunc = 0x8;
    public const int MsgTrunc = 0x20;
    public const int MsgDontwait = 0x40;
    public const int MsgNosignal = 0x4000;
    public const int MsgCmsgCloexec = 0x40000000;

    public const int Eagain = 11;
    public const int Eintr = 4;

    /// <summary><c>f_type</c> of tmpfs/shmem, where non-hugetlb memfds live (<c>TMPFS_MAGIC</c>).</summary>
    public const long TmpfsMagic = 0x01021994;

    /// <summary><c>sizeof(struct cmsghdr)</c> rounded to 8: where a control message's data starts.</summary>
    public const int CmsgHeaderSize = 16;

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct CmsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct UCred
    {
        public int Pid;
        public uint Uid;
        public uint Gid;
    }

    [LibraryImport(Lib, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    // fcntl is variadic in C; one int argument is passed exactly as a fixed one on x86-64 and arm64 Linux.
    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "fstatfs", SetLastError = true)]
    public static partial int Fstatfs(int fd, byte* buffer);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* Mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(void* address, nuint length);

    [LibraryImport(Lib, EntryPoint = "sendmsg", SetLastError = true)]
    public static partial nint SendMsg(nint socket, MsgHdr* message, int flags);

    [LibraryImport(Lib, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(nint socket, MsgHdr* message, int flags);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(nint socket, int level, int name, void* value, uint* length);

    [LibraryImport(Lib, EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUserId();

    /// <summary><c>FUTEX_WAIT</c> (shared, not <c>FUTEX_PRIVATE_FLAG</c>: the word lives in memory two processes map).</summary>
    public const int FutexWait = 0;

    /// <summary><c>FUTEX_WAKE</c> (shared).</summary>
    public const int FutexWake = 1;

    public const int Etimedout = 110;

    [StructLayout(LayoutKind.Sequential)]
    public struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    // syscall(2) is variadic in C; integer and pointer arguments are passed exactly as fixed ones on x86-64 and arm64 Linux.
    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, void* address, int operation, int value, void* timeout, void* address2, int value3);

    /// <summary><c>SYS_futex</c> of this architecture (x86-64 202, arm64 98), or -1 where unknown.</summary>
    private static readonly long FutexSyscall = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 202,
        Architecture.Arm64 => 98,
        _ => -1,
    };

    /// <summary>True where <see cref="Futex"/> knows the system call number.</summary>
    public static bool FutexSupported => FutexSyscall > 0 && OperatingSystem.IsLinux();

    /// <summary><c>futex(word, op, value, timeout)</c>: 0 or the number woken, else -1 with errno set (EAGAIN: the word
    /// no longer held <paramref name="value"/>; ETIMEDOUT; EINTR).</summary>
    public static long Futex(uint* word, int operation, int value, TimeSpec* timeout) =>
        Syscall(FutexSyscall, word, operation, value, timeout, null, 0);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary><c>CMSG_SPACE(n)</c>: bytes a control message with <paramref name="dataBytes"/> of data occupies.</summary>
    public static int CmsgSpace(int dataBytes) => CmsgHeaderSize + ((dataBytes + 7) & ~7);

    /// <summary>The error of the last failed call, as text for messages (<c>errno N</c> plus the runtime's description).</summary>
    public static string LastError() => LastError(Marshal.GetLastPInvokeError());

    /// <summary>An errno value as text for messages.</summary>
    public static string LastError(int errno) => $"errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})";
}
