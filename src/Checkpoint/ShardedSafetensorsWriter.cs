using System.Runtime.InteropServices;
using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>
/// Writes a checkpoint's tensors as a Hugging Face sharded set by streaming: tensors are packed in declaration order
/// into shards of at most <c>maxShardBytes</c> data bytes (a tensor larger than that gets a shard of its own, as
/// transformers does), named <c>model-00001-of-0000N.safetensors</c>, plus <c>model.safetensors.index.json</c>
/// (<c>{"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}</c>). When everything fits in one shard the
/// result is a single <c>model.safetensors</c> and no index. The caller appends data in declaration order with
/// <see cref="Write(ReadOnlySpan{byte})"/>; only one shard is open at a time and memory use is one I/O buffer.
/// The index is written last by <see cref="Complete"/>; disposing without completing deletes every file written.
/// </summary>
public sealed class ShardedSafetensorsWriter : IDisposable
{
    private readonly string _directory;
    private readonly IReadOnlyList<IReadOnlyList<SafetensorsTensorSpec>> _plan;
    private readonly string[] _shardNames;
    private readonly IReadOnlyDictionary<string, string>? _metadata;
    private readonly List<string> _written = [];
    private SafetensorsWriter? _shard;
    private int _shardIndex = -1;
    private long _remainingInShard;
    private bool _completed;

    private ShardedSafetensorsWriter(string directory, IReadOnlyList<IReadOnlyList<SafetensorsTensorSpec>> plan,
        IReadOnlyDictionary<string, string>? metadata)
    {
        _directory = directory;
        _plan = plan;
        _metadata = metadata;
        int n = plan.Count;
        _shardNames = n == 1
            ? [CheckpointReader.SingleFileName]
            : Enumerable.Range(1, n).Select(i => $"model-{i:D5}-of-{n:D5}.safetensors").ToArray();
    }

    /// <summary>File names of the shards (relative to the directory), in order.</summary>
    public IReadOnlyList<string> ShardFileNames => _shardNames;

    /// <summary>The tensor the next bytes belong to, or null once every tensor is complete.</summary>
    public SafetensorsTensorSpec? CurrentTensor => _shard?.CurrentTensor;

    /// <summary>Index of the shard being written (0-based).</summary>
    public int CurrentShard => _shardIndex;

    /// <summary>Raised after each shard file is complete, with its full path.</summary>
    public event Action<string>? ShardCompleted;

    /// <summary>
    /// Splits <paramref name="tensors"/> (in order) into shards of at most <paramref name="maxShardBytes"/> data bytes;
    /// a tensor alone above the limit gets its own shard. Always at least one shard.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxShardBytes"/> is not positive.</exception>
    public static IReadOnlyList<IReadOnlyList<SafetensorsTensorSpec>> PlanShards(IReadOnlyList<SafetensorsTensorSpec> tensors, long maxShardBytes)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        var shards = new List<IReadOnlyList<SafetensorsTensorSpec>>();
        var current = new List<SafetensorsTensorSpec>();
        long size = 0;
        foreach (var t in tensors)
        {
            long b = t.ByteLength;
            if (current.Count > 0 && size + b > maxShardBytes)
            {
                shards.Add(current);
                current = [];
                size = 0;
            }
            current.Add(t);
            size += b;
        }
        shards.Add(current);
        return shards;
    }

    /// <summary>Plans the shards and opens the first one in <paramref name="directory"/> (created if needed).</summary>
    /// <exception cref="ArgumentException">Invalid or duplicate tensor specs, or no tensors.</exception>
    public static ShardedSafetensorsWriter Create(string directory, IReadOnlyList<SafetensorsTensorSpec> tensors, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(tensors);
        if (tensors.Count == 0)
        {
            throw new ArgumentException("a checkpoint needs at least one tensor", nameof(tensors));
        }
        _ = SafetensorsWriter.BuildHeader(tensors, null);
        string dir = Path.GetFullPath(directory);
        Directory.CreateDirectory(dir);
        var writer = new ShardedSafetensorsWriter(dir, PlanShards(tensors, maxShardBytes), metadata);
        try
        {
            writer.OpenNextShard();
            return writer;
        }
        catch
        {
            writer.Dispose();
            throw;
        }
    }

    /// <summary>Appends bytes in tensor declaration order, moving to the next shard as each fills.</summary>
    /// <exception cref="InvalidOperationException">More bytes than declared, or the writer is completed.</exception>
    public void Write(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var shard = _shard ?? throw new InvalidOperationException($"{_directory}: {data.Length} bytes written past the last declared tensor");
            int n = (int)Math.Min(data.Length, _remainingInShard);
            shard.Write(data[..n]);
            data = data[n..];
            _remainingInShard -= n;
            if (shard.CurrentTensor is null)
            {
                FinishShard();
            }
        }
    }

    /// <summary>Appends elements (reinterpreted as bytes) in tensor declaration order.</summary>
    public void Write<T>(ReadOnlySpan<T> data)
        where T : unmanaged => Write(MemoryMarshal.AsBytes(data));

    /// <summary>Checks every tensor was written and writes the index (when there are several shards).</summary>
    /// <exception cref="InvalidOperationException">Data is missing; names the tensor.</exception>
    public void Complete()
    {
        if (_completed)
        {
            throw new InvalidOperationException($"{_directory}: already completed");
        }
        if (_shard is { } open)
        {
            open.Complete();
        }
        if (_shardNames.Length > 1)
        {
            WriteIndex();
        }
        _completed = true;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _shard?.Dispose();
        _shard = null;
        if (!_completed)
        {
            foreach (string f in _written)
            {
                File.Delete(f);
            }
            _written.Clear();
        }
    }

    private void FinishShard()
    {
        var shard = _shard!;
        shard.Complete();
        shard.Dispose();
        _written.Add(shard.Path);
        _shard = null;
        ShardCompleted?.Invoke(shard.Path);
        if (_shardIndex + 1 < _plan.Count)
        {
            OpenNextShard();
        }
    }

    private void OpenNextShard()
    {
        _shardIndex++;
        _shard = SafetensorsWriter.Create(Path.Combine(_directory, _shardNames[_shardIndex]), _plan[_shardIndex], _metadata);
        _remainingInShard = _plan[_shardIndex].Sum(t => t.ByteLength);
        if (_shard.CurrentTensor is null)
        {
            FinishShard();
        }
    }

    private void WriteIndex()
    {
        string path = Path.Combine(_directory, CheckpointReader.IndexFileName);
        long total = _plan.Sum(s => s.Sum(t => t.ByteLength));
        using (var stream = new FileStream(path + ".partial", FileMode.Create, FileAccess.Write, FileShare.None))
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", total);
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            var entries = _plan.SelectMany((shard, i) => shard.Select(t => (t.Name, File: _shardNames[i])))
                .OrderBy(e => e.Name, StringComparer.Ordinal);
            foreach (var (name, file) in entries)
            {
                w.WriteString(name, file);
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.Move(path + ".partial", path, overwrite: true);
        _written.Add(path);
    }
}
