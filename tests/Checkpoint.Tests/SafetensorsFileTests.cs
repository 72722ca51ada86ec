using System.Text.Json;

namespace Distributed.Checkpoint.Tests;

[Trait("Category", "Unit")]
public sealed class SafetensorsFileTests
{
    [Fact]
    public void GoldenFile_ReadsF32AndI64MatchingGoldenJson()
    {
        string dir = CheckpointTestFiles.Fixture("tiny-maverick");
        using var file = SafetensorsFile.Open(Path.Combine(dir, "golden.safetensors"));
        using var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "golden.json")));
        var prompt = golden.RootElement.GetProperty("prompts")[2];
        long[] ids = prompt.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt64()).ToArray();

        Assert.Equal(ids, file.ReadI64("p2.input_ids"));
        var logitsInfo = file.GetInfo("p2.logits");
        Assert.Equal(DType.F32, logitsInfo.DType);
        Assert.Equal([ids.Length, 512L], logitsInfo.Shape);
        float[] logits = file.ReadF32("p2.logits");
        float[] expectedLast = prompt.GetProperty("last_logits").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
        Assert.Equal(expectedLast, logits.AsSpan(logits.Length - 512).ToArray());
        Assert.Equal("llama4ref-golden-v1", file.Metadata["format"]);
    }

    [Fact]
    public void FixtureShard_ParsesAllTensorsInOffsetOrder()
    {
        using var file = SafetensorsFile.Open(Path.Combine(CheckpointTestFiles.Fixture("tiny-scout"), "model.safetensors"));
        Assert.Equal(99, file.Count);
        Assert.Equal("pt", file.Metadata["format"]);
        long previousEnd = file.DataStart;
        foreach (string name in file.TensorNames)
        {
            var info = file.GetInfo(name);
            Assert.Equal(DType.BF16, info.DType);
            Assert.Equal(previousEnd, info.DataOffset);
            previousEnd = info.DataOffset + info.ByteLength;
        }
        Assert.Equal(file.FileLength, previousEnd);
        var embed = file.GetInfo("model.embed_tokens.weight");
        Assert.Equal([512L, 64L], embed.Shape);
        Assert.Equal(512 * 64, file.GetSpan<ushort>("model.embed_tokens.weight").Length);
    }

    [Fact]
    public void ReadF32_ConvertsBf16F16AndF32()
    {
        using var temp = new TempDir();
        float[] values = [1.5f, -2.25f, 0.0f, 3.0e-3f];
        var bf16 = values.Select(DTypeInfo.FloatToBf16).ToArray();
        var f16 = values.Select(v => (Half)v).ToArray();
        SafetensorsWriter.WriteFile(temp.File("a.safetensors"),
        [
            (new SafetensorsTensorSpec("b", DType.BF16, [2, 2]), System.Runtime.InteropServices.MemoryMarshal.AsBytes(bf16.AsSpan()).ToArray()),
            (new SafetensorsTensorSpec("h", DType.F16, [4]), System.Runtime.InteropServices.MemoryMarshal.AsBytes(f16.AsSpan()).ToArray()),
            (new SafetensorsTensorSpec("f", DType.F32, [4]), System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray()),
            (new SafetensorsTensorSpec("i", DType.I32, [2]), new byte[] { 7, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF }),
        ]);
        using var file = SafetensorsFile.Open(temp.File("a.safetensors"));
        Assert.Equal(bf16.Select(DTypeInfo.Bf16ToFloat).ToArray(), file.ReadF32("b"));
        Assert.Equal(f16.Select(h => (float)h).ToArray(), file.ReadF32("h"));
        Assert.Equal(values, file.ReadF32("f"));
        Assert.Equal([7L, -1L], file.ReadI64("i"));
        var ex = Assert.Throws<CheckpointException>(() => file.ReadF32("i"));
        Assert.Contains("'i'", ex.Message);
        Assert.Throws<CheckpointException>(() => file.ReadI64("f"));
    }

    [Fact]
    public void GetSpan_SubRangeIsZeroCopyAndBoundsChecked()
    {
        using var file = SafetensorsFile.Open(Path.Combine(CheckpointTestFiles.Fixture("tiny-scout"), "model.safetensors"));
        const string name = "model.embed_tokens.weight";
        var whole = file.GetSpan<ushort>(name);
        var part = file.GetSpan<ushort>(name, 64 * 5, 64);
        Assert.True(System.Runtime.CompilerServices.Unsafe.AreSame(
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(whole.Slice(64 * 5)),
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(part)));
        Assert.Equal(whole.Slice(64 * 5, 64).ToArray(), part.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetSpan<ushort>(name, 512 * 64 - 10, 11).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetSpan<ushort>(name, -1, 1).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetBytes(name, 0, 512 * 64 * 2 + 1).Length);
        Assert.Throws<CheckpointException>(() => file.GetSpan<float>(name).Length);
        Assert.Throws<CheckpointException>(() => file.GetInfo("nope"));
    }

    [Fact]
    public void Dispose_LaterReadsThrowObjectDisposed()
    {
        var file = SafetensorsFile.Open(Path.Combine(CheckpointTestFiles.Fixture("tiny-scout"), "model.safetensors"));
        file.Dispose();
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("model.norm.weight").Length);
    }

    [Fact]
    public void ZeroSizedTensorsAndMetadataNull_Accepted()
    {
        using var temp = new TempDir();
        CheckpointTestFiles.WriteRaw(temp.File("z.safetensors"),
            """{"__metadata__":null,"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""",
            new byte[4]);
        using var file = SafetensorsFile.Open(temp.File("z.safetensors"));
        Assert.Empty(file.ReadF32("e"));
        Assert.Equal([0f], file.ReadF32("x"));
        Assert.Empty(file.Metadata);
    }

    public static TheoryData<string, string, int, string> BadHeaders => new()
    {
        // name, header JSON, data bytes, expected message fragment
        { "not json", "{\"a\": ", 0, "not well-formed JSON" },
        { "array header", "[1,2]", 0, "not an object" },
        { "unknown dtype", """{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,2]}}""", 2, "tensor 'w': dtype 'Q4' is unknown" },
        { "unsupported dtype", """{"w":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}}""", 2, "tensor 'w': dtype 'F8_E5M2' is not supported" },
        { "negative dim", """{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4, "tensor 'w': shape dimension 0" },
        { "fractional dim", """{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", 4, "shape dimension 0" },
        { "size mismatch", """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}""", 4, "needs 8 bytes but data_offsets [0, 4] hold 4" },
        { "offsets past data", """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 4, "exceed the data section (4 bytes); the file is truncated" },
        { "reversed offsets", """{"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}""", 4, "end before they begin" },
        { "overlap", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, "overlaps the previous tensor" },
        { "gap", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""", 12, "tensor 'b' data_offsets [8, 12] leaves a gap" },
        { "trailing bytes", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 8, "trailing bytes" },
        { "duplicate tensor", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, "lists 'a' twice" },
        { "missing dtype", """{"a":{"shape":[1],"data_offsets":[0,4]}}""", 4, "tensor 'a': 'dtype' must be a string" },
        { "missing offsets", """{"a":{"dtype":"F32","shape":[1]}}""", 4, "tensor 'a': 'data_offsets' must be an array" },
        { "unknown field", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"strides":[1]}}""", 4, "unknown field 'strides'" },
        { "shape overflow", """{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}""", 4, "overflows a 64-bit byte count" },
        { "metadata not strings", """{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, "'__metadata__.k' must be a string" },
        { "entry not object", """{"a":[1]}""", 0, "tensor 'a': entry must be an object" },
    };

    [Theory]
    [MemberData(nameof(BadHeaders))]
    public void Open_InvalidHeader_ThrowsNamingFileAndProblem(string name, string header, int dataBytes, string expected)
    {
        _ = name;
        using var temp = new TempDir();
        string path = temp.File("bad.safetensors");
        CheckpointTestFiles.WriteRaw(path, header, new byte[dataBytes]);
        var ex = Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(expected, ex.Message);
        Assert.Contains(path, ex.Message);
    }

    [Fact]
    public void Open_HeaderLengthBeyondFileOrHuge_Throws()
    {
        using var temp = new TempDir();
        string path = temp.File("h.safetensors");
        CheckpointTestFiles.WriteRaw(path, "{}", [], declaredHeaderLength: 1000);
        Assert.Contains("exceeds the file", Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path)).Message);
        CheckpointTestFiles.WriteRaw(path, "{}", [], declaredHeaderLength: 200UL * 1024 * 1024);
        Assert.Contains("is not in [2, 104857600]", Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path)).Message);
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.Contains("shorter than the 8-byte", Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path)).Message);
        File.WriteAllBytes(path, []);
        Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path));
        Assert.Contains("cannot open", Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(temp.File("missing.safetensors"))).Message);
    }

    [Fact]
    public void Open_TruncatedFixtureShard_ThrowsTruncated()
    {
        using var temp = CheckpointTestFiles.CopyFixture("tiny-scout");
        string path = temp.File("model.safetensors");
        using (var fs = new FileStream(path, FileMode.Open))
        {
            fs.SetLength(fs.Length - 100);
        }
        var ex = Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path));
        Assert.Contains("truncated", ex.Message);
        Assert.Contains("lm_head.weight", ex.Message);
    }
}
