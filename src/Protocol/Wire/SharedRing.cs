using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Distributed.Protocol.Wire;

/// <summary>
/// A memory-mapped file shared by a coordinator and a worker on the same host (the same-host transport): the
/// coordinator places a request's rows at some [offset, offset + length) of the ring and sends only that descriptor
/// over gRPC; the worker reads the rows there and writes its output rows over them (same size), then replies with
/// the same descriptor. The coordinator owns allocation; the worker only bounds-checks descriptors.
/// </summary>
public sealed unsafe class SharedRing : IDisposable
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly bool _owner;
    private int _disposed;

    private SharedRing(string path, MemoryMappedFile file, long size, bool owner)
    {
        Path = path;
        _file = file;
        Size = size;
        _owner = owner;
        _view = file.CreateViewAccessor(0, size, MemoryMappedFileAccess.ReadWrite);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
    }

    /// <summary>Absolute path of the ring file.</summary>
    public string Path { get; }

    /// <summary>Bytes in the ring.</summary>
    public long Size { get; }

    /// <summary>Creates a ring file of <paramref name="size"/> bytes (the caller deletes it on dispose).</summary>
    public static SharedRing Create(string path, long size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 4096L);
        var file = MemoryMappedFile.CreateFromFile(path, FileMode.CreateNew, null, size, MemoryMappedFileAccess.ReadWrite);
        return new SharedRing(path, file, size, owner: true);
    }

    /// <summary>Opens an existing ring file, which must be exactly <paramref name="expectedSize"/> bytes.</summary>
    /// <exception cref="IOException">Missing, or of another size.</exception>
    public static SharedRing Open(string path, long expectedSize)
    {
        var info = new FileInfo(path);
        if (!info.Exists || info.Length != expectedSize)
        {
            throw new IOException($"shared ring '{path}' is missing or not {expectedSize} bytes");
        }
        var file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
        return new SharedRing(path, file, expectedSize, owner: false);
    }

    /// <summary>The bytes [offset, offset + length), or false when the range is not inside the ring.</summary>
    public bool TryGetSpan(ulong offset, ulong length, out Span<byte> span)
    {
        if (offset > (ulong)Size || length > (ulong)Size - offset || length > int.MaxValue || Volatile.Read(ref _disposed) != 0)
        {
            span = default;
            return false;
        }
        span = new Span<byte>(_base + offset, (int)length);
        return true;
    }

    /// <summary>Identity of this machine for same-host checks (kernel boot id, else the host name).</summary>
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

    /// <summary>A default directory for ring files: <c>/dev/shm</c> when present (RAM-backed), else the temp folder.</summary>
    public static string DefaultDirectory => OperatingSystem.IsLinux() && Directory.Exists("/dev/shm") ? "/dev/shm" : System.IO.Path.GetTempPath();

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
        if (_owner)
        {
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
            }
        }
        GC.KeepAlive(this);
    }

    /// <summary>Span over a whole float row block inside the ring (for zero-copy encode/decode).</summary>
    public static Span<float> AsFloats(Span<byte> bytes) => MemoryMarshal.Cast<byte, float>(bytes);
}
