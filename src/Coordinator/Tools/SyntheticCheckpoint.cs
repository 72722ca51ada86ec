using System.Globalization;
using System.Text;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Tools;

/// <summary>
/// Writes a random-weight Llama 4 text checkpoint in the Hugging Face layout (<c>config.json</c> with
/// <c>model_type: llama4_text</c>, <c>generation_config.json</c>, a <see cref="SyntheticTokenizer"/> <c>tokenizer.json</c>
/// when the vocabulary holds one, bf16 safetensors: one <c>model.safetensors</c>, or
/// shards plus <c>model.safetensors.index.json</c> when the data exceeds <see cref="SyntheticCheckpointOptions.MaxShardBytes"/>).
/// It exists to benchmark and test shapes no real checkpoint here has; the numbers mean nothing, but they are
/// deterministic and well scaled so activations stay finite through the whole model.
/// <para>
/// Weights: matrices are approximately normal with standard deviation <c>1/sqrt(fan_in)</c> (fan_in = the input
/// width: <c>shape[1]</c> of an <c>[out, in]</c> Linear weight or of an <c>[E, in, out]</c> fused expert tensor); the
/// embedding table has standard deviation 1; RMSNorm weights are <c>1 + 0.02·n</c>. "Approximately normal" is the
/// Irwin–Hall sum of four 16-bit uniforms (unit variance, tails bounded at ±3.46σ), cheap enough to generate gigabytes
/// in seconds. Each block of <see cref="BlockElements"/> elements has its own generator seeded from
/// (<see cref="SyntheticCheckpointOptions.Seed"/>, tensor name, block index), so the bytes do not depend on the
/// shard size or the thread count.
/// </para>
/// <para>
/// Data is streamed: memory use is one batch buffer (<see cref="BatchBlocks"/> × <see cref="BlockElements"/> bf16
/// values, 16 MiB) whatever the model size. After writing, the directory is reopened with
/// <see cref="CheckpointReader"/> (which validates every tensor) and its fingerprint is logged.
/// </para>
/// </summary>
public static class SyntheticCheckpoint
{
    /// <summary>Elements per independently seeded block (1 Mi).</summary>
    public const int BlockElements = 1 << 20;

    /// <summary>Blocks generated in parallel before each write.</summary>
    public const int BatchBlocks = 8;

    /// <summary>Writes the checkpoint described by <paramref name="options"/> into <paramref name="outDir"/>.</summary>
    /// <param name="outDir">Target directory; created if missing, and must be empty if it exists (files are never overwritten).</param>
    /// <param name="options">Shapes and output settings; validated first.</param>
    /// <param name="log">Progress lines: one at the start, one per shard, one at the end with the fingerprint.</param>
    /// <exception cref="ArgumentException">Invalid options, or <paramref name="outDir"/> is not empty.</exception>
    /// <exception cref="IOException">The files cannot be written.</exception>
    public static void Write(string outDir, SyntheticCheckpointOptions options, TextWriter log)
    {
        ArgumentException.ThrowIfNullOrEmpty(outDir);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(log);
        options.Validate();
        string dir = Path.GetFullPath(outDir);
        if (File.Exists(dir))
        {
            throw new ArgumentException($"output path {dir} is a file, not a directory", nameof(outDir));
        }
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
        {
            throw new ArgumentException($"output directory {dir} is not empty; choose a new or empty directory", nameof(outDir));
        }
        Directory.CreateDirectory(dir);

        var config = options.ToConfig();
        var specs = CheckpointReader.RequiredTensors(config)
            .Where(t => !(t.Optional && config.TieWordEmbeddings))
            .Select(t => (Spec: new SafetensorsTensorSpec(t.Name, DType.BF16, t.Shape), t.IsNorm))
            .ToArray();
        var plan = ShardedSafetensorsWriter.PlanShards(specs.Select(s => s.Spec).ToArray(), options.MaxShardBytes);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"make-synthetic: hidden {config.HiddenSize}, {config.NumLayers} layers (MoE [{string.Join(", ", config.MoeLayers)}]), " +
            $"{config.NumHeads}/{config.NumKvHeads} heads x {config.HeadDim}, {config.NumExperts} experts top-{config.TopK} x {config.IntermediateSize}, " +
            $"dense {config.IntermediateSizeMlp}, vocab {config.VocabSize}: {specs.Length} tensors, {options.TotalBytes / 1e9:F3} GB bf16 in {plan.Count} file(s) -> {dir}"));

        File.WriteAllText(Path.Combine(dir, CheckpointReader.ConfigFileName), Llama4ConfigParser.ToJson(config));
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), GenerationConfigJson(config));
        if (SyntheticTokenizer.Json(config) is { } tokenizer)
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizer);
        }
        else
        {
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"make-synthetic: no tokenizer.json (vocab {config.VocabSize} < {SyntheticTokenizer.MinVocabSize} holds no byte-level tokenizer): infer and bench work, serve does not"));
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };
        using (var writer = ShardedSafetensorsWriter.Create(dir, specs.Select(s => s.Spec).ToArray(), options.MaxShardBytes, metadata))
        {
            writer.ShardCompleted += path => log.WriteLine($"make-synthetic: wrote {Path.GetFileName(path)} ({new FileInfo(path).Length} bytes)");
            var batch = new ushort[BatchBlocks * BlockElements];
            foreach (var (spec, isNorm) in specs)
            {
                WriteTensor(writer, spec, isNorm, options.Seed, batch);
            }
            writer.Complete();
        }

        using var reader = CheckpointReader.Open(dir);
        log.WriteLine($"make-synthetic: done; {reader.TensorNames.Count} tensors validated, fingerprint {reader.Fingerprint}");
    }

    private static void WriteTensor(ShardedSafetensorsWriter writer, SafetensorsTensorSpec spec, bool isNorm, ulong seed, ushort[] batch)
    {
        long total = spec.Shape.Aggregate(1L, (a, b) => checked(a * b));
        float std = isNorm ? 0.02f
            : spec.Name == Llama4TensorNames.Embeddings ? 1.0f
            : 1.0f / MathF.Sqrt(spec.Shape[1]);
        float mean = isNorm ? 1.0f : 0.0f;
        ulong tensorSeed = Mix(seed ^ Fnv1a(spec.Name));
        long blocks = (total + BlockElements - 1) / BlockElements;
        for (long first = 0; first < blocks; first += BatchBlocks)
        {
            int count = (int)Math.Min(BatchBlocks, blocks - first);
            long batchStart = first * BlockElements;
            int batchLength = (int)Math.Min((long)count * BlockElements, total - batchStart);
            Parallel.For(0, count, b =>
            {
                int start = b * BlockElements;
                int length = Math.Min(BlockElements, batchLength - start);
                FillBlock(batch.AsSpan(start, length), Mix(tensorSeed + (ulong)(first + b)), mean, std);
            });
            writer.Write<ushort>(batch.AsSpan(0, batchLength));
        }
    }

    /// <summary>
    /// Fills <paramref name="dst"/> with bf16 values <c>mean + std·z</c>, z the standardised sum of the four 16-bit
    /// lanes of one SplitMix64 output (Irwin–Hall n = 4: mean 2·65535, standard deviation 65536/√3).
    /// </summary>
    private static void FillBlock(Span<ushort> dst, ulong state, float mean, float std)
    {
        const float center = 2 * 65535f;
        float scale = std / (65536f / MathF.Sqrt(3f));
        for (int i = 0; i < dst.Length; i++)
        {
            state += 0x9E3779B97F4A7C15UL;
            ulong z = state;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            z ^= z >> 31;
            uint sum = (uint)(z & 0xFFFF) + (uint)((z >> 16) & 0xFFFF) + (uint)((z >> 32) & 0xFFFF) + (uint)(z >> 48);
            dst[i] = DTypeInfo.FloatToBf16(mean + ((sum - center) * scale));
        }
    }

    /// <summary>SplitMix64 finaliser: decorrelates nearby seeds.</summary>
    private static ulong Mix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    private static ulong Fnv1a(string text)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            h = (h ^ b) * 0x100000001B3UL;
        }
        return h;
    }

    private static string GenerationConfigJson(Llama4TextConfig config) => string.Create(CultureInfo.InvariantCulture,
        $$"""
        {
          "bos_token_id": {{config.BosTokenId}},
          "do_sample": false,
          "eos_token_id": [{{string.Join(", ", config.EosTokenIds)}}],
          "pad_token_id": {{config.PadTokenId}},
          "transformers_version": "4.51.0"
        }

        """);
}
