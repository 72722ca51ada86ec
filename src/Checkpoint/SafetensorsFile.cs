using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Distributed.Checkpoint;

/// <summary>
/// One <c>.safetensors</c> file, memory-mapped read-only with a single view. The header is parsed and validated
/// completely by <see cref="Open"/> (see <see cref="SafetensorsHeaderParser"/>); afterwards every tensor's bytes are
/// known to lie inside the file. Spans returned by this type point straight into the mapping (no copy): they are
/// valid until <see cref="Dispose"/> and must not be used after it. Reading is thread-safe; <see cref="Dispose"/> must
/// not race with reads. If the file is truncated by someone else while mapped, touching the lost pages faults (the
/// operating system's behaviour, not something this type can check).
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly Dictionary<string, TensorInfo> _tensors;
    private readonly string[] _names;
    private byte* _base;

    private SafetensorsFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePointer,
        long length, SafetensorsHeader header)
    {
        Path = path;
        _map = map;
        _view = view;
        _base = basePointer;
        FileLength = length;
        DataStart = header.DataStart;
        Metadata = header.Metadata;
        _tensors = new Dictionary<string, TensorInfo>(header.Tensors.Count, StringComparer.Ordinal);
        foreach (var t in header.Tensors)
        {
            _tensors.Add(t.Name, t);
        }
        _names = header.Tensors.Select(t => t.Name).ToArray();
    }

    /// <summary>Full path of the file.</summary>
    public string Path { get; }

    /// <summary>File size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Absolute offset of the data section (<c>8 + header length</c>).</summary>
    public long DataStart { get; }

    /// <summary>The header's <c>__metadata__</c> string map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensor names in data-offset order.</summary>
    public IReadOnlyList<string> TensorNames => _names;

    /// <summary>Number of tensors.</summary>
    public int Count => _names.Length;

    /// <summary>Opens, maps and validates <paramref name="path"/>.</summary>
    /// <exception cref="CheckpointException">Missing or unreadable file, or any header defect; the message names the file and tensor.</exception>
    public static SafetensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = System.IO.Path.GetFullPath(path);
        FileStream? stream;
        try
        {
            stream = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.None);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"{full}: cannot open safetensors file: {ex.Message}", ex);
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        bool acquired = false;
        try
        {
            long length = stream.Length;
            if (length < 8)
            {
                throw new CheckpointException($"{full}: file is {length} bytes, shorter than the 8-byte safetensors header length");
            }
            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read,
                HandleInheritability.None, leaveOpen: false);
            stream = null;
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* basePointer = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePointer);
            acquired = true;
            basePointer += view.PointerOffset;
            var header = SafetensorsHeaderParser.Parse(full, basePointer, length);
            return new SafetensorsFile(full, map, view, basePointer, length, header);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Cleanup();
            throw new CheckpointException($"{full}: cannot map safetensors file: {ex.Message}", ex);
        }
        catch
        {
            Cleanup();
            throw;
        }

        void Cleanup()
        {
            if (acquired)
            {
                view!.SafeMemoryMappedViewHandle.ReleasePointer();
            }
            view?.Dispose();
            map?.Dispose();
            stream?.Dispose();
        }
    }

    /// <summary>True when the file holds a tensor named <paramref name="name"/>.</summary>
    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>Looks a tensor up.</summary>
    public bool TryGetInfo(string name, out TensorInfo info)
    {
        if (_tensors.TryGetValue(name, out var found))
        {
            info = found;
            return true;
        }
        info = null!;
        return false;
    }

    /// <summary>The tensor named <paramref name="name"/>.</summary>
    /// <exception cref="CheckpointException">No such tensor in this file.</exception>
    public TensorInfo GetInfo(string name)
    {
        if (!_tensors.TryGetValue(name, out var info))
        {
            throw new CheckpointException($"{Path}: no tensor named '{name}'");
        }
        return info;
    }

    /// <summary>A whole tensor's bytes.</summary>
    /// <exception cref="CheckpointException">Unknown tensor, or more than <see cref="int.MaxValue"/> bytes (use the ranged overload).</exception>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var info = GetInfo(name);
        if (info.ByteLength > int.MaxValue)
        {
            throw new CheckpointException(
                $"{Path}: tensor '{name}' has {info.ByteLength} bytes, more than one span can hold; read it in sub-ranges");
        }
        return GetBytes(info, 0, (int)info.ByteLength);
    }

    /// <summary>Bytes <c>[byteOffset, byteOffset + byteLength)</c> of a tensor's data.</summary>
    /// <exception cref="CheckpointException">Unknown tensor.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the tensor.</exception>
    public ReadOnlySpan<byte> GetBytes(string name, long byteOffset, int byteLength) => GetBytes(GetInfo(name), byteOffset, byteLength);

    /// <summary>A whole tensor as elements of <typeparamref name="T"/>, whose size must equal the dtype's.</summary>
    /// <exception cref="CheckpointException">Unknown tensor, size mismatch between <typeparamref name="T"/> and the dtype, or too many elements for one span.</exception>
    public ReadOnlySpan<T> GetSpan<T>(string name)
        where T : unmanaged
    {
        var info = GetInfo(name);
        CheckElementSize<T>(info);
        long count = info.ByteLength / sizeof(T);
        if (count > int.MaxValue)
        {
            throw new CheckpointException(
                $"{Path}: tensor '{name}' has {count} elements, more than one span can hold; read it in sub-ranges");
        }
        return MemoryMarshal.Cast<byte, T>(GetBytes(info, 0, checked((int)info.ByteLength)));
    }

    /// <summary>Elements <c>[elementOffset, elementOffset + count)</c> of a tensor (flattened row-major).</summary>
    /// <exception cref="CheckpointException">Unknown tensor, or size mismatch between <typeparamref name="T"/> and the dtype.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the tensor.</exception>
    public ReadOnlySpan<T> GetSpan<T>(string name, long elementOffset, int count)
        where T : unmanaged
    {
        var info = GetInfo(name);
        return GetSpan<T>(info, elementOffset, count);
    }

    internal ReadOnlySpan<T> GetSpan<T>(TensorInfo info, long elementOffset, int count)
        where T : unmanaged
    {
        CheckElementSize<T>(info);
        long elements = info.ByteLength / sizeof(T);
        if (elementOffset < 0 || count < 0 || elementOffset > elements - count)
        {
            throw new ArgumentOutOfRangeException(nameof(elementOffset),
                $"elements [{elementOffset}, {elementOffset}+{count}) are outside tensor '{info.Name}' ({elements} elements)");
        }
        ObjectDisposedException.ThrowIf(_base == null, this);
        return new ReadOnlySpan<T>(_base + info.DataOffset + (elementOffset * sizeof(T)), count);
    }

    /// <summary>A tensor converted to float32: BF16 and F16 widen exactly, F32 is copied.</summary>
    /// <exception cref="CheckpointException">Unknown tensor or another dtype.</exception>
    public float[] ReadF32(string name)
    {
        var info = GetInfo(name);
        if (info.DType is not (DType.BF16 or DType.F16 or DType.F32))
        {
            throw new CheckpointException($"{Path}: tensor '{name}' has dtype {info.DType}; float conversion needs BF16, F16 or F32");
        }
        int n = CheckedArrayLength(info);
        var result = new float[n];
        switch (info.DType)
        {
            case DType.F32:
                GetSpan<float>(info, 0, n).CopyTo(result);
                break;
            case DType.BF16:
                var bf = GetSpan<ushort>(info, 0, n);
                for (int i = 0; i < n; i++)
                {
                    result[i] = DTypeInfo.Bf16ToFloat(bf[i]);
                }
                break;
            default:
                var h = GetSpan<Half>(info, 0, n);
                for (int i = 0; i < n; i++)
                {
                    result[i] = (float)h[i];
                }
                break;
        }
        return result;
    }

    /// <summary>An integer tensor as int64: I64 is copied, I32 widened.</summary>
    /// <exception cref="CheckpointException">Unknown tensor or another dtype.</exception>
    public long[] ReadI64(string name)
    {
        var info = GetInfo(name);
        if (info.DType is not (DType.I64 or DType.I32))
        {
            throw new CheckpointException($"{Path}: tensor '{name}' has dtype {info.DType}; integer reading needs I64 or I32");
        }
        int n = CheckedArrayLength(info);
        var result = new long[n];
        if (info.DType == DType.I64)
        {
            GetSpan<long>(info, 0, n).CopyTo(result);
        }
        else
        {
            var src = GetSpan<int>(info, 0, n);
            for (int i = 0; i < n; i++)
            {
                result[i] = src[i];
            }
        }
        return result;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_base == null)
        {
            return;
        }
        _base = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    private ReadOnlySpan<byte> GetBytes(TensorInfo info, long byteOffset, int byteLength)
    {
        if (byteOffset < 0 || byteLength < 0 || byteOffset > info.ByteLength - byteLength)
        {
            throw new ArgumentOutOfRangeException(nameof(byteOffset),
                $"bytes [{byteOffset}, {byteOffset}+{byteLength}) are outside tensor '{info.Name}' ({info.ByteLength} bytes)");
        }
        ObjectDisposedException.ThrowIf(_base == null, this);
        return new ReadOnlySpan<byte>(_base + info.DataOffset + byteOffset, byteLength);
    }

    private void CheckElementSize<T>(TensorInfo info)
        where T : unmanaged
    {
        if (sizeof(T) != DTypeInfo.SizeOf(info.DType))
        {
            throw new CheckpointException(
                $"{Path}: tensor '{info.Name}' has dtype {info.DType} ({DTypeInfo.SizeOf(info.DType)} bytes per element), " +
                $"read as {typeof(T).Name} ({sizeof(T)} bytes)");
        }
    }

    private int CheckedArrayLength(TensorInfo info)
    {
        long n = info.ElementCount;
        if (n > Array.MaxLength)
        {
            throw new CheckpointException($"{Path}: tensor '{info.Name}' has {n} elements, too many to copy into one array");
        }
        return (int)n;
    }
}
