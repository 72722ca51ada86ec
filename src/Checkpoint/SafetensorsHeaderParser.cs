using System.Buffers.Binary;
using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>A validated safetensors header.</summary>
/// <param name="DataStart">Absolute file offset of the data section.</param>
/// <param name="Metadata">The <c>__metadata__</c> map (empty when absent).</param>
/// <param name="Tensors">Tensors in ascending data-offset order, with absolute offsets.</param>
internal sealed record SafetensorsHeader(long DataStart, IReadOnlyDictionary<string, string> Metadata, IReadOnlyList<TensorInfo> Tensors);

/// <summary>
/// Parses and validates a safetensors header. The format: bytes 0..8 are the header length N (u64 little-endian),
/// bytes 8..8+N a UTF-8 JSON object (trailing spaces allowed) mapping each tensor name to
/// <c>{"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}</c> plus an optional
/// <c>"__metadata__"</c> string-to-string map; offsets are relative to byte 8+N. Rules enforced, as the reference
/// implementation does: N &lt;= <see cref="MaxHeaderBytes"/> and 8+N &lt;= file length; well-formed JSON without
/// duplicate keys; known dtype; every dimension &gt;= 0; <c>elements × dtype size == end − begin</c> (checked
/// arithmetic); the tensors tile the data section exactly, in offset order, with no gap, no overlap and no
/// trailing bytes (so a truncated file is reported, not read).
/// </summary>
internal static class SafetensorsHeaderParser
{
    /// <summary>Largest accepted header, in bytes (100 MiB).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    private static readonly JsonDocumentOptions JsonOptions = new() { MaxDepth = 16 };

    public static unsafe SafetensorsHeader Parse(string path, byte* file, long fileLength)
    {
        if (fileLength < 8)
        {
            throw new CheckpointException($"{path}: file is {fileLength} bytes, shorter than the 8-byte safetensors header length");
        }
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(file, 8));
        if (headerLength < 2 || headerLength > MaxHeaderBytes)
        {
            throw new CheckpointException(
                $"{path}: header length {headerLength} is not in [2, {MaxHeaderBytes}] bytes (not a safetensors file, or corrupt)");
        }
        if ((long)headerLength > fileLength - 8)
        {
            throw new CheckpointException(
                $"{path}: header length {headerLength} exceeds the file ({fileLength} bytes); the file is truncated or corrupt");
        }
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;
        byte[] json = new ReadOnlySpan<byte>(file + 8, (int)headerLength).ToArray();

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new List<(TensorInfo Info, long Begin, long End)>();
        try
        {
            using var doc = JsonDocument.Parse(json, JsonOptions);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException($"{path}: header JSON is a {doc.RootElement.ValueKind}, not an object");
            }
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(prop.Name))
                {
                    throw new CheckpointException($"{path}: header lists '{prop.Name}' twice");
                }
                if (prop.Name == "__metadata__")
                {
                    ParseMetadata(path, prop.Value, metadata);
                    continue;
                }
                tensors.Add(ParseTensor(path, prop.Name, prop.Value, dataStart));
            }
        }
        catch (JsonException ex)
        {
            throw new CheckpointException($"{path}: header is not well-formed JSON: {ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw new CheckpointException($"{path}: header JSON has an invalid string: {ex.Message}", ex);
        }

        // Zero-byte tensors share an offset with their neighbour; sorting by (begin, end) keeps the tiling check exact.
        tensors.Sort(static (a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long expected = 0;
        foreach (var (info, begin, end) in tensors)
        {
            if (begin != expected)
            {
                string what = begin > expected ? "leaves a gap before it" : "overlaps the previous tensor";
                throw new CheckpointException(
                    $"{path}: tensor '{info.Name}' data_offsets [{begin}, {end}] {what} (expected begin {expected})");
            }
            if (end > dataLength)
            {
                throw new CheckpointException(
                    $"{path}: tensor '{info.Name}' data_offsets [{begin}, {end}] exceed the data section ({dataLength} bytes); the file is truncated");
            }
            expected = end;
        }
        if (expected != dataLength)
        {
            throw new CheckpointException(
                $"{path}: data section is {dataLength} bytes but the tensors cover {expected}; the file has trailing bytes or is corrupt");
        }
        return new SafetensorsHeader(dataStart, metadata, tensors.Select(t => t.Info).ToArray());
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null)
        {
            return;
        }
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointException($"{path}: '__metadata__' must be an object of strings, got {value.ValueKind}");
        }
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw new CheckpointException($"{path}: '__metadata__.{item.Name}' must be a string, got {item.Value.ValueKind}");
            }
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
            {
                throw new CheckpointException($"{path}: '__metadata__' lists '{item.Name}' twice");
            }
        }
    }

    private static (TensorInfo Info, long Begin, long End) ParseTensor(string path, string name, JsonElement value, long dataStart)
    {
        string Where() => $"{path}: tensor '{name}'";
        if (name.Length == 0)
        {
            throw new CheckpointException($"{path}: header has a tensor with an empty name");
        }
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointException($"{Where()}: entry must be an object, got {value.ValueKind}");
        }
        JsonElement? dtypeEl = null, shapeEl = null, offsetsEl = null;
        foreach (var field in value.EnumerateObject())
        {
            switch (field.Name)
            {
                case "dtype" when dtypeEl is null:
                    dtypeEl = field.Value;
                    break;
                case "shape" when shapeEl is null:
                    shapeEl = field.Value;
                    break;
                case "data_offsets" when offsetsEl is null:
                    offsetsEl = field.Value;
                    break;
                case "dtype" or "shape" or "data_offsets":
                    throw new CheckpointException($"{Where()}: field '{field.Name}' appears twice");
                default:
                    throw new CheckpointException($"{Where()}: unknown field '{field.Name}'");
            }
        }
        if (dtypeEl is not { ValueKind: JsonValueKind.String } d)
        {
            throw new CheckpointException($"{Where()}: 'dtype' must be a string");
        }
        string dtypeText = d.GetString()!;
        if (!SafetensorsDTypes.TryParse(dtypeText, out var dtype))
        {
            string why = SafetensorsDTypes.IsKnownUnsupported(dtypeText) ? "is not supported" : "is unknown";
            throw new CheckpointException($"{Where()}: dtype '{dtypeText}' {why} (supported: BF16, F16, F32, I32, I64)");
        }
        if (shapeEl is not { ValueKind: JsonValueKind.Array } s)
        {
            throw new CheckpointException($"{Where()}: 'shape' must be an array of non-negative integers");
        }
        var shape = new long[s.GetArrayLength()];
        int i = 0;
        foreach (var dim in s.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long v) || v < 0)
            {
                throw new CheckpointException($"{Where()}: shape dimension {i} ({dim.GetRawText()}) must be a non-negative integer");
            }
            shape[i++] = v;
        }
        if (offsetsEl is not { ValueKind: JsonValueKind.Array } o || o.GetArrayLength() != 2)
        {
            throw new CheckpointException($"{Where()}: 'data_offsets' must be an array [begin, end]");
        }
        long begin = ReadOffset(o[0], "begin");
        long end = ReadOffset(o[1], "end");
        if (end < begin)
        {
            throw new CheckpointException($"{Where()}: data_offsets [{begin}, {end}] end before they begin");
        }
        long bytes;
        try
        {
            long elements = 1;
            foreach (long dim in shape)
            {
                elements = checked(elements * dim);
            }
            bytes = checked(elements * DTypeInfo.SizeOf(dtype));
        }
        catch (OverflowException)
        {
            throw new CheckpointException($"{Where()}: shape [{string.Join(", ", shape)}] overflows a 64-bit byte count");
        }
        if (bytes != end - begin)
        {
            throw new CheckpointException(
                $"{Where()}: shape [{string.Join(", ", shape)}] of {dtypeText} needs {bytes} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
        }
        long absolute;
        try
        {
            absolute = checked(dataStart + begin);
        }
        catch (OverflowException)
        {
            throw new CheckpointException($"{Where()}: data_offsets [{begin}, {end}] overflow the file offset range");
        }
        return (new TensorInfo(name, dtype, shape, path, absolute, bytes), begin, end);

        long ReadOffset(JsonElement el, string which)
        {
            if (el.ValueKind != JsonValueKind.Number || !el.TryGetInt64(out long v) || v < 0)
            {
                throw new CheckpointException($"{Where()}: data_offsets {which} ({el.GetRawText()}) must be a non-negative integer");
            }
            return v;
        }
    }
}
