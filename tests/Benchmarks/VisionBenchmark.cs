using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Distributed.Checkpoint;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Model.Llama4.Vision;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;

namespace Distributed.Benchmarks;

/// <summary>
/// <c>vision [--threads N] [--layers 3] [--repeat 5]</c>: the cost of images, measured in one run on the CPU backend.
/// <list type="bullet">
/// <item>the vision encoder's time per tile (patch embedding → encoder layers → pixel shuffle → adapter → projector) for
/// tiny-maverick-mm's tower (56-pixel tiles, hidden 48, 2 layers) and for a tower of the releases' widths (336-pixel tiles,
/// 577 tokens, hidden 1408, 16 heads, MLP 5632, adapter 4096) with 1 and <c>--layers</c> encoder layers, whose
/// difference gives the time per layer and the fixed part, scaled to the releases' 34 layers; on tiny-maverick-mm's text
/// model;</item>
/// <item>time to first token through the continuous-batching scheduler for the same prompt without an image and with a
/// one-tile image (the expanded prompt), alternating, median of <c>--repeat</c>; the ratio is the figure that matters.</item>
/// </list>
/// Weights of the wide tower are random bf16 written to a temporary checkpoint (deleted afterwards).
/// </summary>
internal static class VisionBenchmark
{
    public static int Run(string[] args)
    {
        int threads = Arg(args, "--threads", Environment.ProcessorCount);
        int layers = Math.Max(2, Arg(args, "--layers", 3));
        int repeat = Arg(args, "--repeat", 5);
        using var backend = new CpuKernelBackend(threads);
        Console.WriteLine($"vision: {backend.Name} | {backend.Capabilities.Device} | load average {Timing.LoadAverage()} | {RuntimeInformation.FrameworkDescription}");
        string tiny = FindFixture("tiny-maverick-mm");
        Measure(backend, tiny, "tiny-maverick-mm tower (56 px tiles, hidden 48, 2 layers)", repeat);
        string one = WriteWideTower(tiny, 1);
        string wide = WriteWideTower(tiny, layers);
        try
        {
            double t1 = Measure(backend, one, "release-width tower (336 px tiles, hidden 1408, 1 layer)", repeat, ttft: false);
            double tl = Measure(backend, wide, $"release-width tower (336 px tiles, hidden 1408, {layers} layers)", repeat, ttft: true);
            double perLayer = (tl - t1) / (layers - 1);
            double fixedPart = t1 - perLayer;
            Console.WriteLine();
            Console.WriteLine($"release-width tower, 1 tile: {perLayer:F0} ms per encoder layer, {fixedPart:F0} ms for patch embedding + adapter + projector; " +
                $"a 34-layer tower (the releases) would take about {fixedPart + (34 * perLayer):F0} ms per tile on this machine");
        }
        finally
        {
            Directory.Delete(one, recursive: true);
            Directory.Delete(wide, recursive: true);
        }
        return 0;
    }

    /// <summary>Prints the encoder's time per tile (1 and 3 tiles per call) and, when asked, TTFT with and without an image; returns ms per tile at 1 tile.</summary>
    private static double Measure(IKernelBackend backend, string dir, string label, int repeat, bool ttft = true)
    {
        using var engine = Llama4Engine.Load(dir, backend);
        var vision = engine.Vision!;
        var c = vision.Config;
        var rng = new Random(7);
        float[] Pixels(int tiles) => [.. Enumerable.Range(0, tiles * 3 * c.ImageSize * c.ImageSize).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
        Console.WriteLine();
        Console.WriteLine($"== {label}: {c.TokensPerTile} encoder tokens and {c.OutputTokensPerTile} prompt tokens per tile");
        double perTile = 0;
        foreach (int tiles in ttft ? new[] { 1, 3 } : [1])
        {
            float[] pixels = Pixels(tiles);
            double ms = Best(repeat, () => vision.Encode(pixels, tiles, CancellationToken.None));
            perTile = tiles == 1 ? ms : perTile;
            Console.WriteLine($"encoder, {tiles} tile(s) per call: {ms / tiles,9:F2} ms/tile");
        }
        if (!ttft)
        {
            return perTile;
        }

        // TTFT through the serving scheduler, text-only vs the same text plus one single-tile image, alternating.
        var text = new[] { 500, 17, 300, 42, 9, 81, 200, 33, 120, 64, 77, 5, 6, 7, 8, 9 };
        int[] withImage = [.. text[..4], c.BoiTokenId, 508, .. Enumerable.Repeat(c.ImageTokenId, c.OutputTokensPerTile), c.EoiTokenId, .. text[4..]];
        int[] positions = [.. Enumerable.Range(6, c.OutputTokensPerTile)];
        var image = new Llama4ImagePrompt([new Llama4ImageTiles(Pixels(1), 1, "bench")], positions);
        var plain = new List<double>();
        var imaged = new List<double>();
        var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        try
        {
            for (int i = 0; i < repeat + 1; i++)
            {
                double a = Ttft(scheduler, new GenerationRequest($"text-{i}", text, 1, SamplingParams.Greedy));
                double b = Ttft(scheduler, new GenerationRequest($"image-{i}", withImage, 1, SamplingParams.Greedy) { Images = image });
                if (i > 0)
                {
                    plain.Add(a);
                    imaged.Add(b);
                }
            }
        }
        finally
        {
            scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        double p = Median(plain), q = Median(imaged);
        Console.WriteLine($"TTFT, {text.Length}-token prompt:                     {p,9:F2} ms");
        Console.WriteLine($"TTFT, same prompt + one 1-tile image ({withImage.Length} tokens): {q,9:F2} ms   ratio {q / p:F1}x");
        return perTile;
    }

    private static double Ttft(ContinuousBatchScheduler scheduler, GenerationRequest request)
    {
        long t0 = Stopwatch.GetTimestamp();
        var e = scheduler.GenerateAsync(request, CancellationToken.None).GetAsyncEnumerator();
        try
        {
            e.MoveNextAsync().AsTask().GetAwaiter().GetResult();
            double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            while (e.MoveNextAsync().AsTask().GetAwaiter().GetResult())
            {
            }
            return ms;
        }
        finally
        {
            e.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private static double Best(int repeat, Action action)
    {
        action();
        double best = double.MaxValue;
        for (int i = 0; i < repeat; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            action();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        }
        return best;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }

    /// <summary>tiny-maverick-mm's text model with a random vision tower of the releases' widths and <paramref name="layers"/> layers.</summary>
    private static string WriteWideTower(string tiny, int layers)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"vision-bench-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        foreach (string file in Directory.GetFiles(tiny).Where(f => !f.EndsWith("model-00001-of-00004.safetensors", StringComparison.Ordinal)))
        {
            File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        }
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(tiny, "config.json")))!.AsObject();
        var v = config["vision_config"]!.AsObject();
        v["hidden_size"] = 1408;
        v["num_hidden_layers"] = layers;
        v["num_attention_heads"] = 16;
        v["intermediate_size"] = 5632;
        v["image_size"] = 336;
        v["patch_size"] = 14;
        v["projector_input_dim"] = 4096;
        v["projector_output_dim"] = 4096;
        v["vision_output_dim"] = 4096;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        using var reader = CheckpointReader.Open(tiny);
        var wide = Llama4VisionConfigParser.Parse(config.ToJsonString(), "config.json", reader.Config)!;
        var specs = CheckpointReader.RequiredVisionTensors(wide).Select(t => new SafetensorsTensorSpec(t.Name, DType.BF16, t.Shape)).ToList();
        const string shard = "model-00001-of-00004.safetensors";
        var rng = new Random(11);
        using (var writer = SafetensorsWriter.Create(Path.Combine(dir, shard), specs))
        {
            foreach (var spec in specs)
            {
                bool norm = spec.Name.EndsWith("layernorm_pre.weight", StringComparison.Ordinal) || spec.Name.EndsWith("layernorm_post.weight", StringComparison.Ordinal)
                    || spec.Name.EndsWith("_layernorm.weight", StringComparison.Ordinal);
                float scale = spec.Shape.Length == 2 ? 1f / MathF.Sqrt(spec.Shape[1]) : 0.02f;
                var bits = new ushort[spec.Shape.Aggregate(1L, (a, b) => a * b)];
                for (long i = 0; i < bits.Length; i++)
                {
                    bits[i] = DTypeInfo.FloatToBf16(norm ? 1f : (float)((rng.NextDouble() * 2) - 1) * scale);
                }
                writer.Write<ushort>(bits);
            }
            writer.Complete();
        }
        // The projector sits in a text shard: rewrite that shard without it (its new, wider copy is in the vision shard).
        foreach (string file in Directory.GetFiles(dir, "model-*.safetensors").Where(f => !f.EndsWith(shard, StringComparison.Ordinal)))
        {
            using var source = SafetensorsFile.Open(Path.Combine(tiny, Path.GetFileName(file)));
            if (!source.Contains(Llama4VisionTensorNames.Projector))
            {
                continue;
            }
            var kept = source.TensorNames.Where(n => n != Llama4VisionTensorNames.Projector).ToList();
            var keptSpecs = kept.Select(n => source.GetInfo(n)).Select(i => new SafetensorsTensorSpec(i.Name, i.DType, [.. i.Shape])).ToList();
            string rewritten = file + ".new";
            using (var writer = SafetensorsWriter.Create(rewritten, keptSpecs))
            {
                foreach (string n in kept)
                {
                    writer.Write(source.GetBytes(n));
                }
                writer.Complete();
            }
            File.Move(rewritten, file, overwrite: true);
        }
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(tiny, CheckpointReader.IndexFileName)))!.AsObject();
        var map = index["weight_map"]!.AsObject();
        foreach (var name in map.Select(kv => kv.Key).Where(Llama4VisionTensorNames.IsVisionTensor).ToList())
        {
            map.Remove(name);
        }
        foreach (var spec in specs)
        {
            map[spec.Name] = shard;
        }
        File.WriteAllText(Path.Combine(dir, CheckpointReader.IndexFileName), index.ToJsonString());
        return dir;
    }

    private static string FindFixture(string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "fixtures", name);
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException($"tests/fixtures/{name} not found above {AppContext.BaseDirectory}");
    }

    private static int Arg(string[] args, string name, int fallback)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
    }
}
