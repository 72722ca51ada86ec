using System.Text.Json;

namespace Distributed.Tests.Shared;

/// <summary>One image of a <c>golden_vision.json</c> case.</summary>
internal sealed record VisionGoldenImage(string File, int Width, int Height, string PixelsSha256, int[] CanvasHw, int[] ResizedHw, int[] AspectRatio,
    bool GlobalTile, int NumTiles);

/// <summary>One case of <c>tests/fixtures/tiny-maverick-mm/golden_vision.json</c> (tensors in golden_vision.safetensors under <c>c{Index}.</c>).</summary>
internal sealed record VisionGoldenCase(int Index, string Name, int MaxPatches, VisionGoldenImage[] Images, int[] PromptIds, int[] InputIds,
    int[] PatchPositions, string PixelSha256, float[] LastLogits, int[] Argmax, Dictionary<int, int[]> ExpertsTop1, int[] NewTokens,
    Dictionary<int, int[]> FedTokenExpertsTop1)
{
    public override string ToString() => Name;
}

/// <summary>golden_vision.json, parsed (no test framework needed: the GPU check reads it too).</summary>
internal sealed class VisionGolden
{
    public const string FixtureName = "tiny-maverick-mm";

    private VisionGolden(string directory, JsonElement root, IReadOnlyList<VisionGoldenCase> cases)
    {
        Directory = directory;
        Cases = cases;
        var tol = root.GetProperty("tolerances");
        LogitTolerance = tol.GetProperty("logits_max_abs").GetDouble();
        FeatureTolerance = tol.GetProperty("vision_features_max_abs").GetDouble();
        NormalizeLut = root.GetProperty("normalize_lut").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
        var ids = root.GetProperty("special_tokens").GetProperty("ids");
        SpecialIds = ids.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        TileSize = root.GetProperty("processor").GetProperty("tile_size").GetInt32();
    }

    public string Directory { get; }

    public IReadOnlyList<VisionGoldenCase> Cases { get; }

    public double LogitTolerance { get; }

    public double FeatureTolerance { get; }

    public float[] NormalizeLut { get; }

    /// <summary>image_start, image_end, tile_x_separator, tile_y_separator, image, patch → id.</summary>
    public IReadOnlyDictionary<string, int> SpecialIds { get; }

    public int TileSize { get; }

    public string SafetensorsPath => Path.Combine(Directory, "golden_vision.safetensors");

    public static VisionGolden Load(string fixtureDirectory)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(fixtureDirectory, "golden_vision.json")));
        var root = doc.RootElement;
        var cases = new List<VisionGoldenCase>();
        int i = 0;
        foreach (var c in root.GetProperty("cases").EnumerateArray())
        {
            var images = c.GetProperty("images").EnumerateArray().Select(im => new VisionGoldenImage(
                im.GetProperty("file").GetString()!, im.GetProperty("width").GetInt32(), im.GetProperty("height").GetInt32(),
                im.GetProperty("pixels_sha256").GetString()!, Ints(im.GetProperty("canvas_hw")), Ints(im.GetProperty("resized_hw")),
                Ints(im.GetProperty("aspect_ratio")), im.GetProperty("global_tile").GetBoolean(), im.GetProperty("num_tiles").GetInt32())).ToArray();
            var greedy = c.GetProperty("greedy");
            cases.Add(new VisionGoldenCase(i++, c.GetProperty("name").GetString()!, c.GetProperty("max_patches").GetInt32(), images,
                Ints(c.GetProperty("prompt_ids")), Ints(c.GetProperty("input_ids")), Ints(c.GetProperty("patch_token_positions")),
                c.GetProperty("pixel_values").GetProperty("sha256_bf16_le").GetString()!,
                c.GetProperty("last_logits").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray(),
                Ints(c.GetProperty("argmax")),
                c.GetProperty("experts").EnumerateObject().ToDictionary(e => int.Parse(e.Name, System.Globalization.CultureInfo.InvariantCulture), e => Ints(e.Value.GetProperty("top1"))),
                Ints(greedy.GetProperty("new_tokens")),
                greedy.GetProperty("experts_top1_of_fed_tokens").EnumerateObject().ToDictionary(e => int.Parse(e.Name, System.Globalization.CultureInfo.InvariantCulture), e => Ints(e.Value))));
        }
        return new VisionGolden(fixtureDirectory, root.Clone(), cases);
    }

    private static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}
