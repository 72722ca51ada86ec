using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace Distributed.Checkpoint.Tests;

/// <summary>Fixture lookup, temporary copies and raw safetensors surgery for the checkpoint tests.</summary>
internal static class CheckpointTestFiles
{
    private static readonly Lazy<string> RepoRoot = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new InvalidOperationException($"no Distributed.sln above {AppContext.BaseDirectory}");
    });

    public static string Fixture(string name) => Path.Combine(RepoRoot.Value, "tests", "fixtures", name);

    /// <summary>Copies a fixture's model files (not the golden data) into a fresh temporary directory.</summary>
    public static TempDir CopyFixture(string name)
    {
        var temp = new TempDir();
        foreach (string f in Directory.GetFiles(Fixture(name)))
        {
            string file = Path.GetFileName(f);
            if (file.StartsWith("golden", StringComparison.Ordinal) || file == "README.md")
            {
                continue;
            }
            File.Copy(f, Path.Combine(temp.Path, file));
        }
        return temp;
    }

    /// <summary>Writes a safetensors file with a hand-made header (no validation) and raw data.</summary>
    public static void WriteRaw(string path, string headerJson, ReadOnlySpan<byte> data, ulong? declaredHeaderLength = null)
    {
        byte[] json = Encoding.UTF8.GetBytes(headerJson);
        using var fs = File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, declaredHeaderLength ?? (ulong)json.Length);
        fs.Write(len);
        fs.Write(json);
        fs.Write(data);
    }

    /// <summary>Rewrites a safetensors file's header through <paramref name="mutate"/>, keeping the data bytes.</summary>
    public static void MutateHeader(string path, Action<JsonObject> mutate)
    {
        byte[] all = File.ReadAllBytes(path);
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(all);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(all, 8, n))!.AsObject();
        mutate(header);
        WriteRaw(path, header.ToJsonString(), all.AsSpan(8 + n));
    }

    /// <summary>
    /// Rewrites a safetensors file through the writer, letting <paramref name="edit"/> drop (return null) or
    /// re-declare each tensor (same byte count) — for wrong-shape, wrong-dtype and missing-tensor cases.
    /// </summary>
    public static void RewriteTensors(string path, Func<SafetensorsTensorSpec, SafetensorsTensorSpec?> edit)
    {
        var tensors = new List<(SafetensorsTensorSpec, ReadOnlyMemory<byte>)>();
        using (var file = SafetensorsFile.Open(path))
        {
            foreach (string name in file.TensorNames)
            {
                var info = file.GetInfo(name);
                var spec = edit(new SafetensorsTensorSpec(info.Name, info.DType, info.Shape));
                if (spec is not null)
                {
                    tensors.Add((spec, file.GetBytes(name).ToArray()));
                }
            }
        }
        SafetensorsWriter.WriteFile(path, tensors);
    }

    public static void MutateJson(string path, Action<JsonObject> mutate)
    {
        var node = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        mutate(node);
        File.WriteAllText(path, node.ToJsonString());
    }
}

/// <summary>A unique temporary directory, deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ckpt-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a mapping still open on another thread must not fail the test.
        }
    }
}
