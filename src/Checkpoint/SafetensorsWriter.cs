using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>A tensor to be written: name, dtype and shape (its byte length follows).</summary>
/// <param name="Name">Full tensor name (non-empty, not <c>__metadata__</c>).</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, each &gt;= 0.</param>
public sealed record SafetensorsTensorSpec(string Name, DType DType, long[] Shape)
{
    /// <summary>Bytes of data: product of <see cref="Shape"/> × dtype size (checked).</summary>
    public long ByteLength => Shape.Aggregate((long)DTypeInfo.SizeOf(DType), (a, b) => checked(a * b));
}

/// <summary>
/// Writes one <c>.safetensors</c> file by streaming: the header is written first (all shapes are known up front),
/// then the caller appends every tensor's bytes in declaration order with <see cref="Write(ReadOnlySpan{byte})"/>,
/// in chunks of any size (a chunk may span tensors). Memory use is one I/O buffer, independent of the file size.
/// <para>
/// Layout written: 8-byte little-endian header length N, N bytes of JSON
/// (<c>{"__metadata__": {...}, "name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...}</c> in
/// declaration order), padded with spaces so that 8 + N is a multiple of 8 (the data section is then 8-byte aligned),
/// then the tensors back to back. Data goes to <c>path + ".partial"</c>, renamed to <c>path</c> by
/// <see cref="Complete"/>; disposing without completing deletes the partial file.
/// </para>
/// </summary>
public sealed class SafetensorsWriter : IDisposable
{
    private readonly string _path;
    private readonly string _partialPath;
    private readonly IReadOnlyList<SafetensorsTensorSpec> _tensors;
    private FileStream? _stream;
    private int _current;
    private long _remainingInCurrent;
    private bool _completed;

    private SafetensorsWriter(string path, IReadOnlyList<SafetensorsTensorSpec> tensors, FileStream stream)
    {
        _path = path;
        _partialPath = path + ".partial";
        _tensors = tensors;
        _stream = stream;
        _current = -1;
        Advance();
    }

    /// <summary>Full path of the file being written.</summary>
    public string Path => _path;

    /// <summary>The tensor the next bytes belong to, or null once every tensor is complete.</summary>
    public SafetensorsTensorSpec? CurrentTensor => _current < _tensors.Count ? _tensors[_current] : null;

    /// <summary>Bytes still expected for <see cref="CurrentTensor"/>.</summary>
    public long RemainingInCurrentTensor => _remainingInCurrent;

    /// <summary>Creates the file and writes the header.</summary>
    /// <exception cref="ArgumentException">Empty, duplicate or reserved tensor name, negative dimension, or byte-size overflow.</exception>
    /// <exception cref="IOException">The file cannot be created.</exception>
    public static SafetensorsWriter Create(string path, IReadOnlyList<SafetensorsTensorSpec> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        byte[] header = BuildHeader(tensors, metadata);
        string full = System.IO.Path.GetFullPath(path);
        var stream = new FileStream(full + ".partial", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        try
        {
            stream.Write(header);
            return new SafetensorsWriter(full, tensors.ToArray(), stream);
        }
        catch
        {
            stream.Dispose();
            File.Delete(full + ".partial");
            throw;
        }
    }

    /// <summary>Writes a whole file from in-memory tensors (tests and small files).</summary>
    /// <exception cref="ArgumentException">A data length does not match its spec, or an invalid spec.</exception>
    public static void WriteFile(string path, IReadOnlyList<(SafetensorsTensorSpec Spec, ReadOnlyMemory<byte> Data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        foreach (var (spec, data) in tensors)
        {
            if (spec.ByteLength != data.Length)
            {
                throw new ArgumentException($"tensor '{spec.Name}' needs {spec.ByteLength} bytes, got {data.Length}", nameof(tensors));
            }
        }
        using var writer = Create(path, tensors.Select(t => t.Spec).ToArray(), metadata);
        foreach (var (_, data) in tensors)
        {
            writer.Write(data.Span);
        }
        writer.Complete();
    }

    /// <summary>Appends bytes to the data section, in tensor declaration order.</summary>
    /// <exception cref="InvalidOperationException">More bytes than the declared tensors hold, or the writer is completed.</exception>
    public void Write(ReadOnlySpan<byte> data)
    {
        var stream = _stream ?? throw new InvalidOperationException($"{_path}: writer is completed or disposed");
        while (!data.IsEmpty)
        {
            if (_current >= _tensors.Count)
            {
                throw new InvalidOperationException($"{_path}: {data.Length} bytes written past the last declared tensor");
            }
            int n = (int)Math.Min(data.Length, _remainingInCurrent);
            stream.Write(data[..n]);
            data = data[n..];
            _remainingInCurrent -= n;
            if (_remainingInCurrent == 0)
            {
                Advance();
            }
        }
    }

    /// <summary>Appends elements (reinterpreted as bytes, little-endian host order) to the data section.</summary>
    public void Write<T>(ReadOnlySpan<T> data)
        where T : unmanaged => Write(MemoryMarshal.AsBytes(data));

    /// <summary>Checks every declared byte was written, flushes to disk and renames the partial file into place.</summary>
    /// <exception cref="InvalidOperationException">Some tensor is incomplete; names it.</exception>
    public void Complete()
    {
        var stream = _stream ?? throw new InvalidOperationException($"{_path}: writer is completed or disposed");
        if (_current < _tensors.Count)
        {
            throw new InvalidOperationException(
                $"{_path}: tensor '{_tensors[_current].Name}' is missing {_remainingInCurrent} bytes (and {_tensors.Count - _current - 1} tensors after it)");
        }
        stream.Flush(flushToDisk: true);
        stream.Dispose();
        _stream = null;
        File.Move(_partialPath, _path, overwrite: true);
        _completed = true;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_stream is { } s)
        {
            s.Dispose();
            _stream = null;
        }
        if (!_completed && File.Exists(_partialPath))
        {
            File.Delete(_partialPath);
        }
    }

    private void Advance()
    {
        do
        {
            _current++;
        }
        while (_current < _tensors.Count && _tensors[_current].ByteLength == 0);
        _remainingInCurrent = _current < _tensors.Count ? _tensors[_current].ByteLength : 0;
    }

    /// <summary>The 8-byte length prefix plus the padded JSON header for <paramref name="tensors"/>.</summary>
    /// <exception cref="ArgumentException">Invalid spec (names it).</exception>
    public static byte[] BuildHeader(IReadOnlyList<SafetensorsTensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
            }
            var names = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (var t in tensors)
            {
                ArgumentNullException.ThrowIfNull(t);
                if (string.IsNullOrEmpty(t.Name) || t.Name == "__metadata__")
                {
                    throw new ArgumentException($"tensor name '{t.Name}' is empty or reserved", nameof(tensors));
                }
                if (!names.Add(t.Name))
                {
                    throw new ArgumentException($"tensor '{t.Name}' is declared twice", nameof(tensors));
                }
                if (t.Shape.Any(d => d < 0))
                {
                    throw new ArgumentException($"tensor '{t.Name}' has a negative dimension in [{string.Join(", ", t.Shape)}]", nameof(tensors));
                }
                long bytes;
                try
                {
                    bytes = t.ByteLength;
                    checked
                    {
                        _ = offset + bytes;
                    }
                }
                catch (OverflowException)
                {
                    throw new ArgumentException($"tensor '{t.Name}' overflows a 64-bit byte count", nameof(tensors));
                }
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", SafetensorsDTypes.ToText(t.DType));
                w.WriteStartArray("shape");
                foreach (long d in t.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int n = (int)json.Length;
        int padded = (n + 7) & ~7;
        var result = new byte[8 + padded];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)padded);
        json.GetBuffer().AsSpan(0, n).CopyTo(result.AsSpan(8));
        result.AsSpan(8 + n).Fill((byte)' ');
        return result;
    }
}
