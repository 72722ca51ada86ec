using System.Security.Cryptography;
using Distributed.Checkpoint;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Model.Llama4.Vision;
using Distributed.Coordinator.Serving.Images;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Coordinator.Serving.Tokenization;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Xunit.Abstractions;

namespace Distributed.Golden.Tests;

/// <summary>
/// tests/fixtures/tiny-maverick-mm/golden_vision.json judges the image path: pixel values bit for bit (decoded from the
/// PNGs, preprocessed as Llama4ImageProcessorFast), the expanded prompt ids exactly, the vision tower's hidden states,
/// features and projected rows within 1e-3, logits at every prompt position within 2e-3, argmax, routing and the 8
/// greedy tokens exactly — with the prefill cut into pieces that split the image blocks too.
/// </summary>
[Trait("Category", "Golden")]
public sealed class VisionGoldenTests(ITestOutputHelper output)
{
    private static readonly Lazy<VisionGolden> Golden = new(() => VisionGolden.Load(TestPaths.Fixture(VisionGolden.FixtureName)));
    private static readonly Lazy<Llama4Engine> Engine = new(() => Llama4Engine.Load(TestPaths.Fixture(VisionGolden.FixtureName), new CpuKernelBackend(0)));

    public static TheoryData<int> Cases()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Golden.Value.Cases.Count; i++)
        {
            data.Add(i);
        }
        return data;
    }

    public static TheoryData<int, int> CasesAndChunks()
    {
        var data = new TheoryData<int, int>();
        for (int i = 0; i < Golden.Value.Cases.Count; i++)
        {
            foreach (int chunk in new[] { 512, 5, 1 })
            {
                data.Add(i, chunk);
            }
        }
        return data;
    }

    [Fact]
    public void NormalizeLut_IsTheBf16RescaleAndNormalise()
    {
        var processor = new Llama4ImageProcessor(Golden.Value.TileSize, 16);
        Assert.Equal(Golden.Value.NormalizeLut, processor.NormalizeLut.ToArray());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Preprocessing_FromPng_GivesThePixelValuesBitForBit(int index)
    {
        var c = Golden.Value.Cases[index];
        var images = Preprocess(c, out var decoded);
        for (int i = 0; i < c.Images.Length; i++)
        {
            var g = c.Images[i];
            var p = images[i];
            Assert.Equal(g.PixelsSha256, Convert.ToHexStringLower(SHA256.HashData(decoded[i].Rgb)));
            Assert.Equal((g.Width, g.Height), (p.Width, p.Height));
            Assert.Equal(g.CanvasHw, new[] { p.CanvasHeight, p.CanvasWidth });
            Assert.Equal(g.ResizedHw, new[] { p.ResizedHeight, p.ResizedWidth });
            Assert.Equal(g.AspectRatio, new[] { p.TileRows, p.TileColumns });
            Assert.Equal(g.GlobalTile, p.HasGlobalTile);
            Assert.Equal(g.NumTiles, p.Tiles.Tiles);
        }
        float[] all = [.. images.SelectMany(i => i.Tiles.PixelValues)];
        using var file = SafetensorsFile.Open(Golden.Value.SafetensorsPath);
        var expected = file.GetSpan<ushort>($"c{index}.pixel_values");
        Assert.Equal(expected.Length, all.Length);
        int mismatches = 0;
        for (int i = 0; i < all.Length; i++)
        {
            mismatches += DTypeInfo.FloatToBf16(all[i]) == expected[i] ? 0 : 1;
        }
        Assert.True(mismatches == 0, $"{c.Name}: {mismatches} of {all.Length} pixel values differ from the golden bf16 values");
        Assert.Equal(c.PixelSha256, Llama4ImageProcessor.ContentHash(all));
        if (images.Count == 1)
        {
            Assert.Equal(c.PixelSha256, images[0].Tiles.ContentHash);
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void PromptExpansion_GivesTheGoldenInputIdsAndPatchPositions(int index)
    {
        var c = Golden.Value.Cases[index];
        var ids = Golden.Value.SpecialIds;
        var tokens = new Llama4VisionTokenIds(ids["image_start"], ids["image_end"], ids["tile_x_separator"], ids["tile_y_separator"], ids["image"], ids["patch"]);
        var expanded = Llama4PromptExpander.Expand(c.PromptIds, Preprocess(c, out _), tokens, Engine.Value.Vision!.Config.OutputTokensPerTile);
        Assert.Equal(c.InputIds, expanded.Ids);
        Assert.Equal(c.PatchPositions, expanded.Images.PatchPositions);
        expanded.Images.Validate(expanded.Ids, ids["patch"]);
    }

    [Fact]
    public void VisionTokenIds_FromTheFixtureTokenizer_AreTheGoldenOnes()
    {
        var tokenizer = Llama4Tokenizer.Load(TestPaths.Fixture(VisionGolden.FixtureName));
        var tokens = Llama4VisionTokenIds.Resolve(tokenizer, Engine.Value.Vision!.Config);
        var ids = Golden.Value.SpecialIds;
        Assert.Equal(new Llama4VisionTokenIds(ids["image_start"], ids["image_end"], ids["tile_x_separator"], ids["tile_y_separator"], ids["image"], ids["patch"]), tokens);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void VisionTower_OnGoldenPixels_MatchesEveryIntermediateWithin1e3(int index)
    {
        var c = Golden.Value.Cases[index];
        var vision = Engine.Value.Vision!;
        var cfg = vision.Config;
        using var file = SafetensorsFile.Open(Golden.Value.SafetensorsPath);
        float[] pixels = file.ReadF32($"c{index}.pixel_values");
        int tiles = pixels.Length / (3 * cfg.ImageSize * cfg.ImageSize);
        var recorder = new Recorder();
        vision.Observer = recorder;
        float[] projected;
        try
        {
            projected = vision.Encode(pixels, tiles, CancellationToken.None);
        }
        finally
        {
            vision.Observer = null;
        }
        float[] hidden = file.ReadF32($"c{index}.vision_hidden_states");
        int perState = tiles * cfg.TokensPerTile * cfg.HiddenSize;
        var failures = new List<string>();
        double tol = Golden.Value.FeatureTolerance;
        Compare("vision.layernorm_pre", recorder.Get("vision.layernorm_pre"), hidden.AsSpan(0, perState), tol, failures);
        for (int l = 0; l < cfg.NumLayers; l++)
        {
            Compare($"vision.L{l}.out", recorder.Get($"vision.L{l}.out"), hidden.AsSpan((l + 1) * perState, perState), tol, failures);
        }
        Compare("vision.layernorm_post", recorder.Get("vision.layernorm_post"), file.ReadF32($"c{index}.vision_post_norm"), tol, failures);
        Compare("vision.pixel_shuffled", recorder.Get("vision.pixel_shuffled"), file.ReadF32($"c{index}.pixel_shuffled"), tol, failures);
        Compare("vision.features", recorder.Get("vision.features"), file.ReadF32($"c{index}.vision_features"), tol, failures);
        Compare("projected", projected, file.ReadF32($"c{index}.projected"), tol, failures);
        Assert.True(failures.Count == 0, $"{c.Name}:\n  " + string.Join("\n  ", failures));
    }

    [Fact]
    public void VisionTower_TilesPerPass_DoesNotChangeTheRows()
    {
        var vision = Engine.Value.Vision!;
        using var file = SafetensorsFile.Open(Golden.Value.SafetensorsPath);
        float[] pixels = file.ReadF32("c3.pixel_values");
        int tiles = pixels.Length / (3 * vision.Config.ImageSize * vision.Config.ImageSize);
        int saved = vision.TilesPerPass;
        try
        {
            vision.TilesPerPass = 1;
            float[] one = vision.Encode(pixels, tiles, CancellationToken.None);
            vision.TilesPerPass = tiles;
            float[] all = vision.Encode(pixels, tiles, CancellationToken.None);
            Assert.Equal(one, all);
        }
        finally
        {
            vision.TilesPerPass = saved;
        }
    }

    [Theory]
    [MemberData(nameof(CasesAndChunks))]
    public async Task EndToEnd_FromPng_MatchesLogitsRoutingAndGreedyTokens(int index, int prefillChunk)
    {
        var c = Golden.Value.Cases[index];
        var engine = Engine.Value;
        var ids = Golden.Value.SpecialIds;
        var tokens = new Llama4VisionTokenIds(ids["image_start"], ids["image_end"], ids["tile_x_separator"], ids["tile_y_separator"], ids["image"], ids["patch"]);
        var expanded = Llama4PromptExpander.Expand(c.PromptIds, Preprocess(c, out _), tokens, engine.Vision!.Config.OutputTokensPerTile);
        engine.PrefillChunkTokens = prefillChunk;
        var r = await engine.InferAsync(expanded.Ids, c.NewTokens.Length, expanded.Images, CancellationToken.None);

        var failures = new List<string>();
        Assert.Equal(c.InputIds, r.PromptIds);
        double maxDiff = c.LastLogits.Select((v, j) => (double)Math.Abs(r.LastLogits[j] - v)).Max();
        output.WriteLine($"{c.Name} (prefill chunk {prefillChunk}): last-logit max |diff| {maxDiff:E3}");
        if (!(maxDiff <= Golden.Value.LogitTolerance))
        {
            failures.Add($"last_logits max |diff| {maxDiff:E3} > {Golden.Value.LogitTolerance}");
        }
        if (!r.Argmax.SequenceEqual(c.Argmax))
        {
            failures.Add($"argmax: got [{string.Join(",", r.Argmax)}], expected [{string.Join(",", c.Argmax)}]");
        }
        foreach (var (layer, expected) in c.ExpertsTop1)
        {
            int[] got = [.. r.Experts[layer].Select(e => e[0])];
            if (!got.SequenceEqual(expected))
            {
                failures.Add($"routing of layer {layer}: got [{string.Join(",", got)}], expected [{string.Join(",", expected)}]");
            }
        }
        if (!r.NewTokens.SequenceEqual(c.NewTokens))
        {
            failures.Add($"greedy tokens: got [{string.Join(",", r.NewTokens)}], expected [{string.Join(",", c.NewTokens)}]");
        }
        foreach (var (layer, expected) in c.FedTokenExpertsTop1)
        {
            int[] got = [.. r.FedTokenExperts[layer].Select(e => e[0])];
            if (!got.SequenceEqual(expected))
            {
                failures.Add($"routing of fed tokens in layer {layer}: got [{string.Join(",", got)}], expected [{string.Join(",", expected)}]");
            }
        }
        Assert.True(failures.Count == 0, $"{c.Name} (prefill chunk {prefillChunk}):\n  " + string.Join("\n  ", failures));
    }

    /// <summary>
    /// Continuous batching: every case at once, beside two text-only requests, with 3-token prefill chunks (so image
    /// blocks straddle chunks and share steps with other sequences): each gets its golden greedy tokens.
    /// </summary>
    [Fact]
    public async Task Scheduler_AllCasesTogetherWithTextRequests_ChunkedPrefill_GiveTheGoldenTokens()
    {
        var engine = Engine.Value;
        var ids = Golden.Value.SpecialIds;
        var tokens = new Llama4VisionTokenIds(ids["image_start"], ids["image_end"], ids["tile_x_separator"], ids["tile_y_separator"], ids["image"], ids["patch"]);
        await using var scheduler = new Coordinator.Serving.Scheduling.ContinuousBatchScheduler(engine,
            new Coordinator.Serving.Scheduling.SchedulerOptions { PrefillChunkTokens = 3, MaxBatchTokens = 8, MaxRunningSequences = 6 });
        async Task<int[]> RunAsync(Coordinator.Serving.GenerationRequest request)
        {
            var got = new List<int>();
            await foreach (var t in scheduler.GenerateAsync(request, CancellationToken.None))
            {
                got.Add(t.TokenId);
            }
            return [.. got];
        }
        var runs = Golden.Value.Cases.Select(c =>
        {
            var expanded = Llama4PromptExpander.Expand(c.PromptIds, Preprocess(c, out _), tokens, engine.Vision!.Config.OutputTokensPerTile);
            return RunAsync(new Coordinator.Serving.GenerationRequest(c.Name, expanded.Ids, c.NewTokens.Length, Coordinator.Serving.SamplingParams.Greedy)
            {
                Images = expanded.Images,
            });
        }).ToList();
        var text = new[] { RunAsync(new Coordinator.Serving.GenerationRequest("text-a", [500, 17, 300, 42, 9, 81], 6, Coordinator.Serving.SamplingParams.Greedy)),
            RunAsync(new Coordinator.Serving.GenerationRequest("text-b", [500, 1, 2, 3], 5, Coordinator.Serving.SamplingParams.Greedy)) };
        var results = await Task.WhenAll(runs);
        await Task.WhenAll(text);
        for (int i = 0; i < results.Length; i++)
        {
            Assert.True(results[i].SequenceEqual(Golden.Value.Cases[i].NewTokens),
                $"{Golden.Value.Cases[i].Name}: got [{string.Join(",", results[i])}], expected [{string.Join(",", Golden.Value.Cases[i].NewTokens)}]");
        }
    }

    [Fact]
    public async Task Scheduler_ImagesThatDoNotMatchThePrompt_AreRefusedAtAdmission()
    {
        await using var scheduler = new Coordinator.Serving.Scheduling.ContinuousBatchScheduler(Engine.Value, new Coordinator.Serving.Scheduling.SchedulerOptions());
        var c = Golden.Value.Cases[0];
        var prompt = new Llama4ImagePrompt([new Llama4ImageTiles(new float[3 * 56 * 56], 1, "")], [.. c.PatchPositions.Select(p => p + 1)]);
        var e = await Assert.ThrowsAsync<ArgumentException>(async () =>
        {
            await foreach (var _ in scheduler.GenerateAsync(new Coordinator.Serving.GenerationRequest("bad", c.InputIds, 2, Coordinator.Serving.SamplingParams.Greedy) { Images = prompt },
                CancellationToken.None))
            {
            }
        });
        Assert.Contains("image patch token", e.Message);
    }

    /// <summary>Logits at every prompt position (c{i}.logits) and the merged input embeddings (c{i}.inputs_embeds), in one forward.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public async Task EveryPromptPosition_LogitsWithin2e3_AndMergedEmbeddingsWithin1e3(int index)
    {
        var c = Golden.Value.Cases[index];
        var engine = Engine.Value;
        using var file = SafetensorsFile.Open(Golden.Value.SafetensorsPath);
        float[] pixels = file.ReadF32($"c{index}.pixel_values");
        var prompt = new Llama4ImagePrompt([new Llama4ImageTiles(pixels, pixels.Length / (3 * 56 * 56), "")], c.PatchPositions);
        var embeddings = engine.Vision!.EncodePrompt(prompt, CancellationToken.None);
        var recorder = new Recorder();
        engine.Model.Observer = recorder;
        StepResult step;
        try
        {
            const int blockSize = 16;
            long bytes = KvBlockPool.BlocksNeeded(engine.Config, blockSize, c.InputIds.Length, c.InputIds.Length) * KvBlockPool.BytesPerBlock(engine.Config, blockSize);
            using var pool = new KvBlockPool(engine.Config, blockSize, Math.Max(bytes, 1 << 16), engine.Backend, prefixCaching: false);
            using var cache = new PagedKvCache(pool);
            step = await engine.Model.ForwardAsync([new SequenceStep(cache, c.InputIds, LogitsRequest.All) { Embeddings = embeddings.ForRange(0, c.InputIds.Length) }],
                captureRouting: false, CancellationToken.None);
        }
        finally
        {
            engine.Model.Observer = null;
        }
        var failures = new List<string>();
        Compare("logits", step.Logits, file.ReadF32($"c{index}.logits"), Golden.Value.LogitTolerance, failures);
        Compare("inputs_embeds", recorder.Get("embed"), file.ReadF32($"c{index}.inputs_embeds"), Golden.Value.FeatureTolerance, failures);
        Assert.True(failures.Count == 0, $"{c.Name}:\n  " + string.Join("\n  ", failures));
    }

    private static List<PreprocessedImage> Preprocess(VisionGoldenCase c, out List<DecodedImage> decoded)
    {
        var processor = new Llama4ImageProcessor(Golden.Value.TileSize, c.MaxPatches);
        decoded = [.. c.Images.Select(i => ImageDecoder.Decode(File.ReadAllBytes(Path.Combine(Golden.Value.Directory, i.File)), 1 << 24))];
        return [.. decoded.Select(processor.Process)];
    }

    private static void Compare(string name, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double tolerance, List<string> failures)
    {
        if (actual.Length != expected.Length)
        {
            failures.Add($"{name}: {actual.Length} values, expected {expected.Length}");
            return;
        }
        double worst = 0;
        int at = -1;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = Math.Abs(actual[i] - expected[i]);
            if (!(d <= worst))
            {
                worst = d;
                at = i;
            }
        }
        if (!(worst <= tolerance))
        {
            failures.Add($"{name}: max |diff| {worst:E3} at element {at} > {tolerance}");
        }
    }

    private sealed class Recorder : IActivationObserver
    {
        private readonly Dictionary<string, List<float>> _tensors = [];

        public void OnTensor(string name, ReadOnlySpan<float> data, int rows, int cols)
        {
            if (!_tensors.TryGetValue(name, out var list))
            {
                _tensors[name] = list = [];
            }
            list.AddRange(data[..(rows * cols)]);
        }

        public float[] Get(string name) => _tensors.TryGetValue(name, out var l) ? [.. l] : [];
    }
}
