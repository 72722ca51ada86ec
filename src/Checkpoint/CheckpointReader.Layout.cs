using System.Text.Json;

namespace Distributed.Checkpoint;

public sealed partial class CheckpointReader
{
    /// <summary>
    /// Which safetensors files hold the model: the shards named by <c>model.safetensors.index.json</c> when it exists
    /// (its <c>weight_map</c> is returned), else <c>model.safetensors</c>, else the only <c>*.safetensors</c> file.
    /// </summary>
    private static (IReadOnlyList<string> Paths, Dictionary<string, string>? WeightMap) LocateWeights(string dir)
    {
        string indexPath = Path.Combine(dir, IndexFileName);
        if (File.Exists(indexPath))
        {
            var weightMap = ReadIndex(dir, indexPath);
            var shards = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)
                .Select(f => Path.Combine(dir, f)).ToArray();
            return (shards, weightMap);
        }
        string single = Path.Combine(dir, SingleFileName);
        if (File.Exists(single))
        {
            return ([single], null);
        }
        var candidates = System.IO.Directory.GetFiles(dir, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        return candidates.Length switch
        {
            1 => (candidates, null),
            0 => throw new CheckpointException(
                $"{dir}: no weights found (expected {IndexFileName}, {SingleFileName} or one *.safetensors file)"),
            _ => throw new CheckpointException(
                $"{dir}: {candidates.Length} .safetensors files ({string.Join(", ", candidates.Select(Path.GetFileName))}) " +
                $"but no {IndexFileName} saying which hold the model"),
        };
    }

    /// <summary>
    /// Parses <c>model.safetensors.index.json</c>: an object with a <c>weight_map</c> object mapping each tensor name to
    /// a shard file name in the same directory (plain file names only; no paths). Every named shard must exist.
    /// </summary>
    private static Dictionary<string, string> ReadIndex(string dir, string indexPath)
    {
        string text = ReadText(indexPath, "sharded checkpoint index");
        using (var doc = JsonFields.ParseDocument(text, indexPath, 16))
        {
            var top = JsonFields.Of(doc.RootElement, indexPath, "", "the top level");
            if (!top.TryGet("weight_map", out var mapEl))
            {
                throw top.Missing("weight_map", "an object mapping tensor names to shard files");
            }
            if (mapEl.ValueKind != JsonValueKind.Object)
            {
                throw top.Error("weight_map", "an object mapping tensor names to shard files", mapEl);
            }
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            var checkedFiles = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in mapEl.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                {
                    throw new CheckpointException(
                        $"{indexPath}: weight_map entry '{entry.Name}' must be a file name string, got {JsonFields.Describe(entry.Value)}");
                }
                string file = entry.Value.GetString()!;
                if (file.Length == 0 || file is "." or ".." || file.Contains('/') || file.Contains('\\') || Path.IsPathRooted(file))
                {
                    throw new CheckpointException(
                        $"{indexPath}: weight_map entry '{entry.Name}' names '{file}', which is not a plain file name in the model directory");
                }
                if (checkedFiles.Add(file) && !File.Exists(Path.Combine(dir, file)))
                {
                    throw new CheckpointException(
                        $"{indexPath}: weight_map entry '{entry.Name}' names '{file}', which does not exist in {dir}");
                }
                if (!map.TryAdd(entry.Name, file))
                {
                    throw new CheckpointException($"{indexPath}: weight_map lists tensor '{entry.Name}' twice");
                }
            }
            if (map.Count == 0)
            {
                throw new CheckpointException($"{indexPath}: weight_map is empty");
            }
            return map;
        }
    }

    /// <summary>
    /// Text-model tensors (those starting with <paramref name="prefix"/>) keyed by their name without it. With an
    /// index, every entry must be in the shard it names and no shard may hold a text tensor the index places
    /// elsewhere or omits.
    /// </summary>
    private static Dictionary<string, Entry> BuildTensorTable(string dir, string prefix, List<SafetensorsFile> files,
        Dictionary<string, string>? weightMap)
    {
        var table = new Dictionary<string, Entry>(StringComparer.Ordinal);
        if (weightMap is not null)
        {
            var byName = files.ToDictionary(f => Path.GetFileName(f.Path), StringComparer.Ordinal);
            foreach (var (tensor, file) in weightMap)
            {
                var shard = byName[file];
                if (!shard.TryGetInfo(tensor, out var info))
                {
                    throw new CheckpointException(
                        $"{Path.Combine(dir, IndexFileName)}: tensor '{tensor}' is mapped to '{file}', which does not contain it");
                }
                if (tensor.StartsWith(prefix, StringComparison.Ordinal))
                {
                    table.Add(tensor[prefix.Length..], new Entry(shard, info));
                }
            }
            foreach (var shard in files)
            {
                string shardName = Path.GetFileName(shard.Path);
                foreach (string tensor in shard.TensorNames)
                {
                    if (!tensor.StartsWith(prefix, StringComparison.Ordinal))
                    {
                        continue;
                    }
                    if (!weightMap.TryGetValue(tensor, out string? mapped))
                    {
                        throw new CheckpointException(
                            $"{shard.Path}: holds tensor '{tensor}', which {IndexFileName} does not list");
                    }
                    if (mapped != shardName)
                    {
                        throw new CheckpointException(
                            $"{shard.Path}: holds tensor '{tensor}', which {IndexFileName} places in '{mapped}'");
                    }
                }
            }
            return table;
        }

        foreach (var file in files)
        {
            foreach (string tensor in file.TensorNames)
            {
                if (tensor.StartsWith(prefix, StringComparison.Ordinal))
                {
                    table.Add(tensor[prefix.Length..], new Entry(file, file.GetInfo(tensor)));
                }
            }
        }
        return table;
    }
}
