using System.Globalization;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Tools;

/// <summary>
/// Shape and output settings of a random-weight Llama 4 checkpoint written by <see cref="SyntheticCheckpoint"/>.
/// Start from <see cref="Preset"/> and adjust with <c>with</c> or <see cref="WithOverrides"/> (the CLI's per-field
/// flags). Every field is checked by <see cref="Validate"/>; messages name the CLI key (<c>'kv-heads'</c>).
/// </summary>
public sealed record SyntheticCheckpointOptions
{
    /// <summary><c>hidden_size</c>. CLI <c>--hidden</c>.</summary>
    public required int HiddenSize { get; init; }
    /// <summary><c>num_hidden_layers</c>. CLI <c>--layers</c>.</summary>
    public required int NumLayers { get; init; }
    /// <summary><c>num_attention_heads</c>. CLI <c>--heads</c>.</summary>
    public required int NumHeads { get; init; }
    /// <summary><c>num_key_value_heads</c> (must divide the head count). CLI <c>--kv-heads</c>.</summary>
    public required int NumKvHeads { get; init; }
    /// <summary><c>head_dim</c> (even). CLI <c>--head-dim</c>.</summary>
    public required int HeadDim { get; init; }
    /// <summary><c>intermediate_size</c>: routed and shared expert width. CLI <c>--intermediate</c>.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary><c>intermediate_size_mlp</c>: dense-layer MLP width. CLI <c>--intermediate-mlp</c>.</summary>
    public required int IntermediateSizeMlp { get; init; }
    /// <summary><c>num_local_experts</c>. CLI <c>--experts</c>.</summary>
    public required int NumExperts { get; init; }
    /// <summary><c>num_experts_per_tok</c>. CLI <c>--top-k</c>.</summary>
    public required int TopK { get; init; }
    /// <summary><c>interleave_moe_layer_step</c>: every n-th layer is MoE (1 = all, Scout; 2 = Maverick). CLI <c>--interleave</c>.</summary>
    public required int InterleaveMoeLayerStep { get; init; }
    /// <summary><c>vocab_size</c> (at least 4: bos 1, eos 2, pad = vocab − 1). CLI <c>--vocab</c>.</summary>
    public required int VocabSize { get; init; }
    /// <summary><c>use_qk_norm</c>. CLI <c>--qk-norm true|false</c>.</summary>
    public required bool UseQkNorm { get; init; }
    /// <summary><c>attention_chunk_size</c> in tokens. CLI <c>--chunk-size</c>.</summary>
    public required int AttentionChunkSize { get; init; }
    /// <summary><c>rope_theta</c>. CLI <c>--rope-theta</c>.</summary>
    public required double RopeTheta { get; init; }
    /// <summary>Seed of the weights: the same seed and shapes give bit-identical tensors whatever the sharding. CLI <c>--seed</c>.</summary>
    public required ulong Seed { get; init; }
    /// <summary>Largest shard data size in bytes (a bigger tensor gets its own shard). CLI <c>--max-shard-bytes</c> (accepts KiB/MiB/GiB suffixes).</summary>
    public required long MaxShardBytes { get; init; }
    /// <summary><c>max_position_embeddings</c>. Default 131072. CLI <c>--max-position-embeddings</c>.</summary>
    public int MaxPositionEmbeddings { get; init; } = 131072;
    /// <summary><c>tie_word_embeddings</c> (no <c>lm_head.weight</c> when true). Default false. CLI <c>--tie-embeddings</c>.</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>Names accepted by <see cref="Preset"/>.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = ["tiny", "maverick-h2048"];

    /// <summary>Keys accepted by <see cref="WithOverrides"/> (CLI flags without <c>--</c>), with what each sets.</summary>
    public static IReadOnlyDictionary<string, string> OverrideKeys { get; } = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["hidden"] = "hidden_size",
        ["layers"] = "num_hidden_layers",
        ["heads"] = "num_attention_heads",
        ["kv-heads"] = "num_key_value_heads",
        ["head-dim"] = "head_dim",
        ["intermediate"] = "intermediate_size (experts and shared expert)",
        ["intermediate-mlp"] = "intermediate_size_mlp (dense layers)",
        ["experts"] = "num_local_experts",
        ["top-k"] = "num_experts_per_tok",
        ["interleave"] = "interleave_moe_layer_step",
        ["vocab"] = "vocab_size",
        ["qk-norm"] = "use_qk_norm (true/false)",
        ["chunk-size"] = "attention_chunk_size",
        ["rope-theta"] = "rope_theta",
        ["seed"] = "weight seed (unsigned 64-bit)",
        ["max-shard-bytes"] = "largest shard in bytes (suffixes KiB, MiB, GiB)",
        ["max-position-embeddings"] = "max_position_embeddings",
        ["tie-embeddings"] = "tie_word_embeddings (true/false)",
    };

    /// <summary>
    /// A named shape. <c>tiny</c>: hidden 64, 4 layers (MoE every 2nd), 4 heads / 2 kv heads of 16, 8 experts top-1 of
    /// width 32, dense MLP 128, vocab 256, qk-norm, chunk 16, 64 KiB shards (about 0.5 MB in 8+ files; for tests).
    /// <c>maverick-h2048</c>: a Maverick-shaped model at reduced width: hidden 2048, 8 layers (MoE every 2nd),
    /// 16 heads / 4 kv heads of 128, 16 experts top-1 of width 4096, dense MLP 8192, vocab 8192, qk-norm, chunk 8192,
    /// rope theta 500000, 1 GiB shards (4.06 GB of bf16 in 4 files).
    /// </summary>
    /// <exception cref="ArgumentException">Unknown name (the message lists the presets).</exception>
    public static SyntheticCheckpointOptions Preset(string name) => name switch
    {
        "tiny" => new SyntheticCheckpointOptions
        {
            HiddenSize = 64,
            NumLayers = 4,
            NumHeads = 4,
            NumKvHeads = 2,
            HeadDim = 16,
            IntermediateSize = 32,
            IntermediateSizeMlp = 128,
            NumExperts = 8,
            TopK = 1,
            InterleaveMoeLayerStep = 2,
            VocabSize = 256,
            UseQkNorm = true,
            AttentionChunkSize = 16,
            RopeTheta = 500000.0,
            Seed = 1,
            MaxShardBytes = 64 * 1024,
            MaxPositionEmbeddings = 4096,
        },
        "maverick-h2048" => new SyntheticCheckpointOptions
        {
            HiddenSize = 2048,
            NumLayers = 8,
            NumHeads = 16,
            NumKvHeads = 4,
            HeadDim = 128,
            IntermediateSize = 4096,
            IntermediateSizeMlp = 8192,
            NumExperts = 16,
            TopK = 1,
            InterleaveMoeLayerStep = 2,
            VocabSize = 8192,
            UseQkNorm = true,
            AttentionChunkSize = 8192,
            RopeTheta = 500000.0,
            Seed = 1,
            MaxShardBytes = 1L << 30,
        },
        _ => throw new ArgumentException(
            $"unknown synthetic checkpoint preset '{name}' (known: {string.Join(", ", PresetNames)})", nameof(name)),
    };

    /// <summary>
    /// A copy with CLI-style overrides applied (<c>{"hidden": "1024", "qk-norm": "false"}</c>; keys from
    /// <see cref="OverrideKeys"/>), then validated.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown key, unparsable value, or an invalid result; names the key.</exception>
    public SyntheticCheckpointOptions WithOverrides(IReadOnlyDictionary<string, string> overrides)
    {
        ArgumentNullException.ThrowIfNull(overrides);
        var o = this;
        foreach (var (key, value) in overrides)
        {
            o = key switch
            {
                "hidden" => o with { HiddenSize = ParseInt(key, value) },
                "layers" => o with { NumLayers = ParseInt(key, value) },
                "heads" => o with { NumHeads = ParseInt(key, value) },
                "kv-heads" => o with { NumKvHeads = ParseInt(key, value) },
                "head-dim" => o with { HeadDim = ParseInt(key, value) },
                "intermediate" => o with { IntermediateSize = ParseInt(key, value) },
                "intermediate-mlp" => o with { IntermediateSizeMlp = ParseInt(key, value) },
                "experts" => o with { NumExperts = ParseInt(key, value) },
                "top-k" => o with { TopK = ParseInt(key, value) },
                "interleave" => o with { InterleaveMoeLayerStep = ParseInt(key, value) },
                "vocab" => o with { VocabSize = ParseInt(key, value) },
                "qk-norm" => o with { UseQkNorm = ParseBool(key, value) },
                "chunk-size" => o with { AttentionChunkSize = ParseInt(key, value) },
                "rope-theta" => o with { RopeTheta = ParseDouble(key, value) },
                "seed" => o with { Seed = ParseSeed(key, value) },
                "max-shard-bytes" => o with { MaxShardBytes = ParseBytes(key, value) },
                "max-position-embeddings" => o with { MaxPositionEmbeddings = ParseInt(key, value) },
                "tie-embeddings" => o with { TieWordEmbeddings = ParseBool(key, value) },
                _ => throw new ArgumentException(
                    $"unknown synthetic checkpoint option '{key}' (known: {string.Join(", ", OverrideKeys.Keys)})", nameof(overrides)),
            };
        }
        o.Validate();
        return o;
    }

    /// <summary>Checks every field; the message names the CLI key and the rule broken.</summary>
    /// <exception cref="ArgumentException">An invalid field.</exception>
    public void Validate()
    {
        Positive("hidden", HiddenSize);
        Positive("layers", NumLayers);
        Positive("heads", NumHeads);
        Positive("kv-heads", NumKvHeads);
        Positive("head-dim", HeadDim);
        Positive("intermediate", IntermediateSize);
        Positive("intermediate-mlp", IntermediateSizeMlp);
        Positive("experts", NumExperts);
        Positive("top-k", TopK);
        Positive("interleave", InterleaveMoeLayerStep);
        Positive("chunk-size", AttentionChunkSize);
        Positive("max-position-embeddings", MaxPositionEmbeddings);
        if (NumHeads % NumKvHeads != 0)
        {
            throw Fail("kv-heads", $"must divide 'heads' ({NumHeads}), got {NumKvHeads}");
        }
        if (HeadDim % 2 != 0)
        {
            throw Fail("head-dim", $"must be even (rotary embeddings rotate pairs), got {HeadDim}");
        }
        if ((long)NumHeads * HeadDim > int.MaxValue)
        {
            throw Fail("head-dim", $"heads x head-dim must fit in 32 bits, got {NumHeads} x {HeadDim}");
        }
        if (IntermediateSize > int.MaxValue / 2)
        {
            throw Fail("intermediate", $"must be at most {int.MaxValue / 2}, got {IntermediateSize}");
        }
        if (TopK > NumExperts)
        {
            throw Fail("top-k", $"must not exceed 'experts' ({NumExperts}), got {TopK}");
        }
        if (InterleaveMoeLayerStep > NumLayers)
        {
            throw Fail("interleave", $"must not exceed 'layers' ({NumLayers}) or the model has no MoE layer, got {InterleaveMoeLayerStep}");
        }
        if (VocabSize < 4)
        {
            throw Fail("vocab", $"must be at least 4 (bos 1, eos 2, pad vocab-1), got {VocabSize}");
        }
        if (!double.IsFinite(RopeTheta) || RopeTheta <= 0)
        {
            throw Fail("rope-theta", $"must be a positive finite number, got {RopeTheta}");
        }
        if (MaxShardBytes <= 0)
        {
            throw Fail("max-shard-bytes", $"must be positive, got {MaxShardBytes}");
        }
        try
        {
            _ = TotalBytes;
        }
        catch (OverflowException)
        {
            throw Fail("hidden", "the model's total size overflows 64 bits; shrink it");
        }
    }

    /// <summary>The HF text config these options describe (MoE layers and NoPE layers derived as transformers does).</summary>
    public Llama4TextConfig ToConfig()
    {
        int step = InterleaveMoeLayerStep;
        return new Llama4TextConfig
        {
            HiddenSize = HiddenSize,
            NumLayers = NumLayers,
            NumHeads = NumHeads,
            NumKvHeads = NumKvHeads,
            HeadDim = HeadDim,
            IntermediateSize = IntermediateSize,
            IntermediateSizeMlp = IntermediateSizeMlp,
            NumExperts = NumExperts,
            TopK = TopK,
            InterleaveMoeLayerStep = step,
            MoeLayers = Enumerable.Range(0, NumLayers).Where(l => (l + 1) % step == 0).ToArray(),
            NoRopeLayers = Enumerable.Range(0, NumLayers).Select(l => (l + 1) % 4 != 0 ? 1 : 0).ToArray(),
            AttentionChunkSize = AttentionChunkSize,
            UseQkNorm = UseQkNorm,
            AttnTemperatureTuning = true,
            FloorScale = 8192,
            AttnScale = 0.1,
            RopeTheta = RopeTheta,
            RopeScaling = null,
            RmsNormEps = 1e-5,
            VocabSize = VocabSize,
            MaxPositionEmbeddings = MaxPositionEmbeddings,
            TieWordEmbeddings = TieWordEmbeddings,
            BosTokenId = 1,
            EosTokenIds = [2],
            PadTokenId = VocabSize - 1,
        };
    }

    /// <summary>Bytes of bf16 tensor data the checkpoint holds (headers and JSON excluded).</summary>
    /// <exception cref="OverflowException">The shapes overflow 64 bits.</exception>
    public long TotalBytes => CheckpointReader.RequiredTensors(ToConfig())
        .Where(t => !(t.Optional && TieWordEmbeddings))
        .Aggregate(0L, (sum, t) => checked(sum + (2 * t.Shape.Aggregate(1L, (a, b) => checked(a * b)))));

    private static void Positive(string key, int value)
    {
        if (value <= 0)
        {
            throw Fail(key, $"must be a positive integer, got {value}");
        }
    }

    private static ArgumentException Fail(string key, string rule) => new($"synthetic checkpoint option '{key}' {rule}");

    private static int ParseInt(string key, string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
            ? v
            : throw Fail(key, $"must be an integer, got '{value}'");

    private static double ParseDouble(string key, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
            ? v
            : throw Fail(key, $"must be a number, got '{value}'");

    private static ulong ParseSeed(string key, string value) =>
        ulong.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v)
            ? v
            : throw Fail(key, $"must be an unsigned 64-bit integer, got '{value}'");

    private static bool ParseBool(string key, string value) => value.ToLowerInvariant() switch
    {
        "true" or "on" or "yes" or "1" => true,
        "false" or "off" or "no" or "0" => false,
        _ => throw Fail(key, $"must be true or false, got '{value}'"),
    };

    /// <summary>Bytes with an optional binary suffix: <c>1048576</c>, <c>512KiB</c>, <c>64MiB</c>, <c>2GiB</c> (K/M/G also accepted).</summary>
    private static long ParseBytes(string key, string value)
    {
        string v = value.Trim();
        long multiplier = 1;
        foreach (var (suffix, m) in new (string, long)[] { ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30) })
        {
            if (v.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                multiplier = m;
                v = v[..^suffix.Length].TrimEnd();
                break;
            }
        }
        if (!long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n <= 0 || n > long.MaxValue / multiplier)
        {
            throw Fail(key, $"must be a positive byte count such as 1048576, 512MiB or 2GiB, got '{value}'");
        }
        return n * multiplier;
    }
}
