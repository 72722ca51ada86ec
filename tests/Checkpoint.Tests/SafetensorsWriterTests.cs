using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Distributed.Checkpoint.Tests;

[Trait("Category", "Unit")]
public sealed class SafetensorsWriterTests
{
    private static byte[] Bytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public void RoundTrip_AllDTypesScalarAndEmpty_PreservedWithAlignedHeader()
    {
        using var temp = new TempDir();
        string path = temp.File("rt.safetensors");
        var tensors = new (SafetensorsTensorSpec Spec, ReadOnlyMemory<byte> Data)[]
        {
            (new("w.bf16", DType.BF16, [3, 5]), Bytes(30, 1)),
            (new("w.f16", DType.F16, [7]), Bytes(14, 2)),
            (new("empty", DType.F32, [0, 4]), Array.Empty<byte>()),
            (new("scalar", DType.F32, []), Bytes(4, 3)),
            (new("ids", DType.I64, [2, 1]), Bytes(16, 4)),
            (new("i32", DType.I32, [3]), Bytes(12, 5)),
        };
        SafetensorsWriter.WriteFile(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode" });

        byte[] raw = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(raw);
        Assert.Equal(0UL, (8 + n) % 8);
        Assert.False(File.Exists(path + ".partial"));

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(tensors.Select(t => t.Spec.Name).Order(), file.TensorNames.Order());
        Assert.Equal("ünïcode", file.Metadata["note"]);
        foreach (var (spec, data) in tensors)
        {
            var info = file.GetInfo(spec.Name);
            Assert.Equal(spec.DType, info.DType);
            Assert.Equal(spec.Shape, info.Shape);
            Assert.Equal(data.ToArray(), file.GetBytes(spec.Name).ToArray());
        }
    }

    [Fact]
    public void Streaming_OddChunksAcrossTensorBoundaries_SameBytesAsWholeWrites()
    {
        using var temp = new TempDir();
        SafetensorsTensorSpec[] specs = [new("a", DType.BF16, [1000]), new("z", DType.F32, [0]), new("b", DType.F32, [333]), new("c", DType.BF16, [1])];
        byte[] all = Bytes(2000 + 1332 + 2, 9);
        using (var w = SafetensorsWriter.Create(temp.File("s.safetensors"), specs))
        {
            Assert.Equal("a", w.CurrentTensor!.Name);
            int pos = 0;
            foreach (int chunk in new[] { 1, 7, 1999, 500, 13, 600, all.Length })
            {
                int take = Math.Min(chunk, all.Length - pos);
                w.Write(all.AsSpan(pos, take));
                pos += take;
            }
            Assert.Null(w.CurrentTensor);
            w.Complete();
        }
        SafetensorsWriter.WriteFile(temp.File("w.safetensors"),
        [
            (specs[0], all.AsMemory(0, 2000)),
            (specs[1], ReadOnlyMemory<byte>.Empty),
            (specs[2], all.AsMemory(2000, 1332)),
            (specs[3], all.AsMemory(3332, 2)),
        ]);
        Assert.Equal(File.ReadAllBytes(temp.File("w.safetensors")), File.ReadAllBytes(temp.File("s.safetensors")));
    }

    [Fact]
    public void Misuse_IsRejectedAndLeavesNoFile()
    {
        using var temp = new TempDir();
        string path = temp.File("m.safetensors");
        using (var w = SafetensorsWriter.Create(path, [new("a", DType.F32, [2])]))
        {
            w.Write(new byte[4]);
            var ex = Assert.Throws<InvalidOperationException>(w.Complete);
            Assert.Contains("tensor 'a' is missing 4 bytes", ex.Message);
            Assert.Throws<InvalidOperationException>(() => w.Write(new byte[5]));
        }
        Assert.False(File.Exists(path));
        Assert.False(File.Exists(path + ".partial"));

        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("a", DType.F32, [1]), new("a", DType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("", DType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("__metadata__", DType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("n", DType.F32, [-1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.WriteFile(path, [(new SafetensorsTensorSpec("a", DType.F32, [2]), new byte[7])]));
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void PlanShards_PacksInOrderAndIsolatesOversizedTensors()
    {
        SafetensorsTensorSpec T(string n, long bytes) => new(n, DType.BF16, [bytes / 2]);
        var plan = ShardedSafetensorsWriter.PlanShards([T("a", 40), T("b", 40), T("c", 40), T("big", 500), T("d", 10)], 100);
        Assert.Equal(["a,b", "c", "big", "d"], plan.Select(s => string.Join(",", s.Select(t => t.Name))));
        Assert.Single(ShardedSafetensorsWriter.PlanShards([T("a", 40)], 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ShardedSafetensorsWriter.PlanShards([T("a", 40)], 0));
    }

    [Fact]
    public void Sharded_RewrittenFixtureOpensWithSameFingerprintAndBytes()
    {
        using var temp = new TempDir();
        string source = CheckpointTestFiles.Fixture("tiny-scout");
        File.Copy(Path.Combine(source, "config.json"), temp.File("config.json"));
        using var original = SafetensorsFile.Open(Path.Combine(source, "model.safetensors"));
        var specs = original.TensorNames.Select(n => original.GetInfo(n)).Select(i => new SafetensorsTensorSpec(i.Name, i.DType, i.Shape)).ToArray();
        var completed = new List<string>();
        using (var w = ShardedSafetensorsWriter.Create(temp.Path, specs, 300_000))
        {
            w.ShardCompleted += completed.Add;
            foreach (var s in specs)
            {
                var bytes = original.GetBytes(s.Name);
                w.Write(bytes[..(bytes.Length / 3)]);
                w.Write(bytes[(bytes.Length / 3)..]);
            }
            w.Complete();
            Assert.Equal(w.ShardFileNames.Count, completed.Count);
        }
        Assert.True(completed.Count > 1);
        Assert.Equal("model-00001-of-" + completed.Count.ToString("D5") + ".safetensors", Path.GetFileName(completed[0]));

        using var index = JsonDocument.Parse(File.ReadAllText(temp.File(CheckpointReader.IndexFileName)));
        Assert.Equal(specs.Sum(s => s.ByteLength), index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        Assert.Equal(specs.Length, index.RootElement.GetProperty("weight_map").EnumerateObject().Count());
        foreach (string f in completed)
        {
            Assert.True(new FileInfo(f).Length <= 300_000 + 16_384);
        }

        using var rewritten = CheckpointReader.Open(temp.Path);
        using var reference = CheckpointReader.Open(source);
        Assert.Equal(reference.Fingerprint, rewritten.Fingerprint);
        Assert.Equal(completed.Count, rewritten.Files.Count);
        foreach (string name in reference.TensorNames)
        {
            var info = reference.GetInfo(name);
            Assert.Equal(original.GetBytes(info.Name).ToArray(), rewritten.GetRawBytes(name, 0, (int)info.ByteLength).ToArray());
        }
    }

    [Fact]
    public void Sharded_SingleShard_IsModelSafetensorsWithoutIndex()
    {
        using var temp = new TempDir();
        using (var w = ShardedSafetensorsWriter.Create(temp.Path, [new("a", DType.F32, [2]), new("b", DType.F32, [1])], 1 << 20))
        {
            w.Write<float>([1f, 2f, 3f]);
            w.Complete();
        }
        Assert.Equal(["model.safetensors"], Directory.GetFiles(temp.Path).Select(Path.GetFileName));
        using var f = SafetensorsFile.Open(temp.File("model.safetensors"));
        Assert.Equal([3f], f.ReadF32("b"));
    }

    [Fact]
    public void Sharded_AbandonedWrite_DeletesEverything()
    {
        using var temp = new TempDir();
        using (var w = ShardedSafetensorsWriter.Create(temp.Path, [new("a", DType.F32, [4]), new("b", DType.F32, [4]), new("c", DType.F32, [4])], 16))
        {
            w.Write(new byte[16 + 8]);
            Assert.Equal(1, w.CurrentShard);
            Assert.Throws<InvalidOperationException>(w.Complete);
        }
        Assert.Empty(Directory.GetFiles(temp.Path));
    }

    [Fact]
    public void Sharded_WritePastEnd_Throws()
    {
        using var temp = new TempDir();
        using var w = ShardedSafetensorsWriter.Create(temp.Path, [new("a", DType.F32, [1]), new("b", DType.F32, [1])], 4);
        Assert.Throws<InvalidOperationException>(() => w.Write(new byte[9]));
    }

    [Fact]
    public void Write_TypedSpan_IsLittleEndianBytes()
    {
        using var temp = new TempDir();
        using (var w = SafetensorsWriter.Create(temp.File("t.safetensors"), [new("x", DType.I64, [2])]))
        {
            w.Write<long>([1L, -2L]);
            w.Complete();
        }
        using var f = SafetensorsFile.Open(temp.File("t.safetensors"));
        Assert.Equal([1L, -2L], f.ReadI64("x"));
        Assert.Equal(MemoryMarshal.AsBytes<long>([1L, -2L]).ToArray(), f.GetBytes("x").ToArray());
    }
}
