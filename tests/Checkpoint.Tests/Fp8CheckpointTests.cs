using System.Text.Json.Nodes;
using Distributed.Protocol.Contracts;

namespace Distributed.Checkpoint.Tests;

/// <summary>
/// The FP8 release format (compressed-tensors, <c>tests/fixtures/tiny-maverick-fp8</c>): the E4M3 codec and both
/// quantizers against the fixture's codec cases, opening and validating the checkpoint, reading expert projections,
/// and <c>--quantize fp8</c> reproducing the FP8 fixture from its bf16 source (<c>tiny-maverick-mm</c>) byte for byte.
/// </summary>
[Trait("Category", "Unit")]
public sealed class Fp8CheckpointTests
{
    private const string Fp8 = "tiny-maverick-fp8";

    private static SafetensorsFile Cases() => SafetensorsFile.Open(Path.Combine(CheckpointTestFiles.Fixture(Fp8), "fp8_codec_cases.safetensors"));

    [Fact]
    public void Decode_EveryCode_IsTheFixturesValue()
    {
        using var f = Cases();
        var codes = f.GetSpan<byte>("decode.codes").ToArray();
        var values = f.ReadF32("decode.values");
        Assert.Equal(256, codes.Length);
        for (int i = 0; i < 256; i++)
        {
            float got = Fp8E4M3.ToFloat(codes[i]);
            if (float.IsNaN(values[i]))
            {
                Assert.True(float.IsNaN(got) && Fp8E4M3.IsNaN(codes[i]), $"code 0x{codes[i]:X2} must be NaN");
                continue;
            }
            Assert.True(BitConverter.SingleToInt32Bits(values[i]) == BitConverter.SingleToInt32Bits(got), $"code 0x{codes[i]:X2}: {got} != {values[i]}");
            Assert.Equal(codes[i], Fp8E4M3.FromFloat(values[i]));
            Assert.Equal(values[i], DTypeInfo.Bf16ToFloat(Fp8E4M3.ToBf16Bits(codes[i])));
        }
    }

    [Fact]
    public void ActivationQuantization_EveryCaseRow_MatchesScaleCodesAndDequantBitwise()
    {
        using var f = Cases();
        var input = f.ReadF32("act_quant.input");
        var scales = f.ReadF32("act_quant.scale");
        var codes = f.GetSpan<byte>("act_quant.codes").ToArray();
        var dequant = f.ReadF32("act_quant.dequant");
        int rows = scales.Length, cols = input.Length / rows;
        var got = new byte[cols];
        var values = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            var x = input.AsSpan(r * cols, cols);
            float s = Fp8E4M3.QuantizeRow(x, got);
            Assert.True(BitConverter.SingleToInt32Bits(scales[r]) == BitConverter.SingleToInt32Bits(s), $"row {r}: scale {s:R} != {scales[r]:R}");
            Assert.Equal(codes.AsSpan(r * cols, cols).ToArray(), got);
            Assert.Equal(s, Fp8E4M3.QuantizeRowToValues(x, values));
            for (int c = 0; c < cols; c++)
            {
                Assert.Equal(Fp8E4M3.ToFloat(got[c]), values[c]);
                float d = Fp8E4M3.ToFloat(got[c]) * s;
                Assert.True(BitConverter.SingleToInt32Bits(dequant[(r * cols) + c]) == BitConverter.SingleToInt32Bits(d), $"row {r} col {c}: {d:R} != {dequant[(r * cols) + c]:R}");
            }
        }
    }

    [Fact]
    public void WeightQuantization_EveryCaseRow_MatchesCodesAndScaleBitwise()
    {
        using var f = Cases();
        var input = f.GetSpan<ushort>("weight_quant.input").ToArray();
        var codes = f.GetSpan<byte>("weight_quant.weight").ToArray();
        var scales = f.GetSpan<ushort>("weight_quant.weight_scale").ToArray();
        int rows = scales.Length, cols = input.Length / rows;
        var got = new byte[cols];
        for (int r = 0; r < rows; r++)
        {
            ushort scale = Fp8E4M3.QuantizeWeightRow(input.AsSpan(r * cols, cols), got);
            Assert.True(scales[r] == scale, $"row {r}: scale bits 0x{scale:X4} != 0x{scales[r]:X4}");
            Assert.Equal(codes.AsSpan(r * cols, cols).ToArray(), got);
        }
    }

    [Theory]
    [InlineData(0.0f, 0x00)]
    [InlineData(-0.0f, 0x80)]
    [InlineData(448f, 0x7E)]
    [InlineData(-448f, 0xFE)]
    [InlineData(1000f, 0x7E)]
    [InlineData(float.NaN, 0x7F)]
    [InlineData(1.0625f, 0x38)]   // tie between 1.0 (0x38, even) and 1.125 (0x39): even wins
    [InlineData(1.1875f, 0x3A)]   // tie between 1.125 (0x39) and 1.25 (0x3A, even)
    [InlineData(0.0009765625f, 0x00)] // 2^-10, half of the smallest subnormal 2^-9: tie to 0 (even)
    [InlineData(0.0029296875f, 0x02)] // 1.5 * 2^-9: tie between 1 and 2 subnormal steps, 2 is even
    [InlineData(0.01513671875f, 0x08)] // 7.75 * 2^-9 rounds up to 8 * 2^-9 = 2^-6, the smallest normal
    [InlineData(464f, 0x7E)]      // would round to 512 (not representable): saturates
    public void FromFloat_RoundsToNearestEvenAndSaturates(float value, int code) => Assert.Equal((byte)code, Fp8E4M3.FromFloat(value));

    [Fact]
    public void Open_Fp8Release_DetectsTheFormatAndItsQuantizationConfig()
    {
        using var fp8 = CheckpointReader.Open(CheckpointTestFiles.Fixture(Fp8));
        using var bf16 = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        Assert.Equal(ExpertWeightFormat.Fp8E4M3, fp8.ExpertFormat);
        Assert.Equal(ExpertWeightFormat.Bf16, bf16.ExpertFormat);
        Assert.True(fp8.Quantization.IsFp8PerChannel);
        Assert.True(fp8.Quantization.DeclaresPerTokenActivations);
        Assert.Equal(62, fp8.Quantization.Ignore.Count);
        Assert.Same(CheckpointQuantization.None, bf16.Quantization);
        Assert.NotEqual(bf16.Fingerprint, fp8.Fingerprint);
        Assert.Equal(Llama4ConfigParser.ToJson(bf16.Config), Llama4ConfigParser.ToJson(fp8.Config));
        // Every text tensor is accounted for: 3 MoE layers × 128 experts × 3 projections × (weight + scale) replace the fused pair.
        var required = CheckpointReader.RequiredTensors(fp8.Config, ExpertWeightFormat.Fp8E4M3).Select(t => t.Name).Order(StringComparer.Ordinal);
        Assert.Equal(fp8.TensorNames, required);
        Assert.Equal(bf16.TensorNames.Count - 6 + (3 * 128 * 6), fp8.TensorNames.Count);
    }

    [Fact]
    public void GetFp8ExpertProjection_ReadsCodesAndScales_AndItsDequantizationIsCloseToTheBf16Source()
    {
        using var fp8 = CheckpointReader.Open(CheckpointTestFiles.Fixture(Fp8));
        using var bf16 = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        var gate = fp8.GetFp8ExpertProjection(3, 10, ExpertProjection.Gate, out float[] scales).ToArray();
        Assert.Equal(32 * 64, gate.Length);
        Assert.Equal(32, scales.Length);
        // gate_up_proj[e] = concat(gate.weight.T, up.weight.T): element [h, o] of the fused slice is gate.weight[o, h].
        var fused = bf16.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(3), 10, 128, 64, 64);
        double worst = 0;
        for (int o = 0; o < 32; o++)
        {
            for (int h = 0; h < 64; h++)
            {
                double w = DTypeInfo.Bf16ToFloat(fused[(h * 64) + o]);
                worst = Math.Max(worst, Math.Abs((Fp8E4M3.ToFloat(gate[(o * 64) + h]) * scales[o]) - w));
            }
        }
        Assert.InRange(worst, 0, 0.0115); // the README's max |error| 0.011
        Assert.Throws<ArgumentOutOfRangeException>(() => fp8.GetFp8ExpertProjection(2, 0, ExpertProjection.Gate, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => fp8.GetFp8ExpertProjection(1, 128, ExpertProjection.Gate, out _));
        Assert.Throws<CheckpointException>(() => bf16.GetFp8ExpertProjection(1, 0, ExpertProjection.Gate, out _));
    }

    [Fact]
    public void QuantizeAtLoad_OfTheBf16Source_ReproducesTheFp8CheckpointByteForByte()
    {
        using var fp8 = CheckpointReader.Open(CheckpointTestFiles.Fixture(Fp8));
        using var bf16 = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        var c = bf16.Config;
        int h = c.HiddenSize, i = c.IntermediateSize;
        foreach (int layer in c.MoeLayerIndices)
        {
            for (int e = 0; e < c.NumExperts; e++)
            {
                var (gateUpCodes, gateUpScales) = ExpertWeights.QuantizeColumns(bf16.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(layer), e, c.NumExperts, h, 2 * i), h, 2 * i);
                var (downCodes, downScales) = ExpertWeights.QuantizeColumns(bf16.GetExpertSlice(Llama4TensorNames.ExpertsDown(layer), e, c.NumExperts, i, h), i, h);
                var gate = fp8.GetFp8ExpertProjection(layer, e, ExpertProjection.Gate, out float[] gs).ToArray();
                var up = fp8.GetFp8ExpertProjection(layer, e, ExpertProjection.Up, out float[] us).ToArray();
                var down = fp8.GetFp8ExpertProjection(layer, e, ExpertProjection.Down, out float[] ds).ToArray();
                Assert.True(gateUpCodes.AsSpan(0, i * h).SequenceEqual(gate), $"layer {layer} expert {e} gate codes");
                Assert.True(gateUpCodes.AsSpan(i * h).SequenceEqual(up), $"layer {layer} expert {e} up codes");
                Assert.True(downCodes.AsSpan().SequenceEqual(down), $"layer {layer} expert {e} down codes");
                Assert.Equal([.. gs, .. us], gateUpScales);
                Assert.Equal(ds, downScales);
            }
        }
    }

    [Fact]
    public void Descriptor_DistinguishesPrecisions_AndSizesFp8Experts()
    {
        using var fp8 = CheckpointReader.Open(CheckpointTestFiles.Fixture(Fp8));
        using var bf16 = CheckpointReader.Open(CheckpointTestFiles.Fixture("tiny-maverick-mm"));
        var plain = ModelDescriptors.FromCheckpoint(bf16);
        var quantized = ModelDescriptors.FromCheckpoint(bf16, new ExpertLoadOptions(ExpertQuantization.Fp8));
        var native = ModelDescriptors.FromCheckpoint(fp8, new ExpertLoadOptions(Activations: Fp8ActivationMode.PerTokenFp8));
        Assert.Equal(bf16.Fingerprint, plain.Fingerprint);
        Assert.NotEqual(plain.Fingerprint, quantized.Fingerprint);
        Assert.Equal(fp8.Fingerprint, native.Fingerprint);
        Assert.Equal(ExpertWeightFormat.Bf16, plain.ExpertFormat);
        Assert.Equal(ExpertWeightFormat.Fp8E4M3, quantized.ExpertFormat);
        Assert.Equal(ExpertWeightFormat.Fp8E4M3, native.ExpertFormat);
        Assert.Equal(3L * 64 * 32 * 2, plain.ExpertBytes);
        Assert.Equal((3L * 64 * 32) + ((2 * 32) + 64) * 4, native.ExpertBytes);
        Assert.Contains("already FP8", Assert.Throws<CheckpointException>(() => ModelDescriptors.FromCheckpoint(fp8, new ExpertLoadOptions(ExpertQuantization.Fp8))).Message);
        Assert.Contains("--fp8-activations needs FP8 experts",
            Assert.Throws<CheckpointException>(() => ModelDescriptors.FromCheckpoint(bf16, new ExpertLoadOptions(Activations: Fp8ActivationMode.PerTokenFp8))).Message);
    }

    public static TheoryData<string, string, string> BadQuantizationConfigs => new()
    {
        { "quant_method", "\"fbgemm_fp8\"", "quant_method' is \"fbgemm_fp8\"" },
        { "format", "\"int-quantized\"", "'quantization_config.format' must be \"float-quantized\"" },
        { "config_groups.group_0.weights.strategy", "\"tensor\"", "weights.strategy' must be \"channel\"" },
        { "config_groups.group_0.weights.num_bits", "4", "weights.num_bits' must be 8" },
        { "config_groups.group_0.weights.dynamic", "true", "weights.dynamic' must be false" },
        { "config_groups.group_0.weights.symmetric", "false", "weights.symmetric' must be true" },
        { "config_groups.group_0.input_activations.strategy", "\"tensor\"", "input_activations.strategy' must be \"token\"" },
        { "config_groups.group_0.input_activations.dynamic", "false", "input_activations.dynamic' must be true" },
        { "config_groups.group_0.output_activations", "{\"num_bits\": 8}", "output_activations' must be null" },
        { "kv_cache_scheme", "{\"num_bits\": 8}", "kv_cache_scheme' must be null" },
        { "ignore", "\"lm_head\"", "'quantization_config.ignore' must be an array" },
    };

    [Theory]
    [MemberData(nameof(BadQuantizationConfigs))]
    public void Open_UnsupportedQuantizationConfig_NamesTheField(string path, string json, string expected)
    {
        using var temp = CheckpointTestFiles.CopyFixture(Fp8);
        CheckpointTestFiles.MutateJson(temp.File("config.json"), root =>
        {
            JsonObject node = root["quantization_config"]!.AsObject();
            string[] parts = path.Split('.');
            foreach (string part in parts[..^1])
            {
                node = node[part]!.AsObject();
            }
            node[parts[^1]] = JsonNode.Parse(json);
        });
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_Fp8ExpertsWithoutQuantizationConfig_OrAnExpertListedInIgnore_IsRefused()
    {
        using (var temp = CheckpointTestFiles.CopyFixture(Fp8))
        {
            CheckpointTestFiles.MutateJson(temp.File("config.json"), root => root.Remove("quantization_config"));
            Assert.Contains("no compressed-tensors quantization_config", Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        }
        using (var temp = CheckpointTestFiles.CopyFixture(Fp8))
        {
            CheckpointTestFiles.MutateJson(temp.File("config.json"),
                root => root["quantization_config"]!["ignore"]!.AsArray().Add("language_model.model.layers.1.feed_forward.experts.5.up_proj"));
            Assert.Contains("lists the routed expert module 'language_model.model.layers.1.feed_forward.experts.5.up_proj'",
                Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        }
        using (var temp = CheckpointTestFiles.CopyFixture("tiny-maverick-mm"))
        {
            string fp8Config = File.ReadAllText(Path.Combine(CheckpointTestFiles.Fixture(Fp8), "config.json"));
            File.WriteAllText(temp.File("config.json"), fp8Config);
            Assert.Contains("declares a compressed-tensors FP8 quantization_config but the routed experts are fused bf16",
                Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path)).Message);
        }
    }

    [Fact]
    public void Open_MissingOrMisshapenFp8Tensor_NamesIt()
    {
        using (var temp = CheckpointTestFiles.CopyFixture(Fp8))
        {
            string name = "language_model.model.layers.3.feed_forward.experts.100.down_proj.weight_scale";
            RewriteShard(temp, name, spec => spec with { Shape = [32, 2] });
            var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
            Assert.Contains($"tensor '{name}'", ex.Message);
            Assert.Contains("expected [64, 1]", ex.Message);
        }
        using (var temp = CheckpointTestFiles.CopyFixture(Fp8))
        {
            string name = "language_model.model.layers.5.feed_forward.experts.7.gate_proj.weight";
            RewriteShard(temp, name, spec => spec with { DType = DType.BF16, Shape = [32, 32] });
            var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(temp.Path));
            Assert.Contains($"tensor '{name}'", ex.Message);
        }
    }

    [Theory]
    [InlineData("weight", 0x7F, "element [3, 5] is the NaN code 0x7F")]
    [InlineData("weight", 0xFF, "element [3, 5] is the NaN code 0xFF")]
    [InlineData("weight_scale", 0x00, "row 3 is 0")]
    [InlineData("weight_scale", 0xFF, "row 3 is NaN")]
    public void LoadingAnExpert_WithANaNCodeOrBadScale_NamesTensorAndIndex(string suffix, int value, string expected)
    {
        using var temp = CheckpointTestFiles.CopyFixture(Fp8);
        string name = "language_model.model.layers.1.feed_forward.experts.42.up_proj." + suffix;
        PatchTensorBytes(temp, name, suffix == "weight" ? (3 * 64) + 5 : 3 * 2, suffix == "weight" ? [(byte)value] : [(byte)value, (byte)(value == 0 ? 0 : 0x7F)]);
        using var reader = CheckpointReader.Open(temp.Path);
        var ex = Assert.Throws<CheckpointException>(() => reader.GetFp8ExpertProjection(1, 42, ExpertProjection.Up, out _));
        Assert.Contains($"tensor '{name}'", ex.Message);
        Assert.Contains(expected, ex.Message);
        using var backend = new Kernels.Cpu.CpuKernelBackend(1);
        Assert.Throws<CheckpointException>(() => ExpertWeights.Load(reader, backend, 1, 42));
        using var fine = ExpertWeights.Load(reader, backend, 1, 41);
        Assert.Equal(64, fine.GateUp.InFeatures);
    }

    private static string ShardOf(TempDir temp, string name)
    {
        var index = JsonNode.Parse(File.ReadAllText(temp.File(CheckpointReader.IndexFileName)))!;
        return temp.File(index["weight_map"]![name]!.GetValue<string>());
    }

    private static void RewriteShard(TempDir temp, string name, Func<SafetensorsTensorSpec, SafetensorsTensorSpec> edit) =>
        CheckpointTestFiles.RewriteTensors(ShardOf(temp, name), spec => spec.Name == name ? edit(spec) : spec);

    private static void PatchTensorBytes(TempDir temp, string name, long byteOffset, byte[] bytes)
    {
        string shard = ShardOf(temp, name);
        long at;
        using (var file = SafetensorsFile.Open(shard))
        {
            at = file.GetInfo(name).DataOffset + byteOffset;
        }
        using var fs = new FileStream(shard, FileMode.Open, FileAccess.Write);
        fs.Position = at;
        fs.Write(bytes);
    }
}
