using System.Text.Json;

namespace Distributed.Golden.Tests;

/// <summary>One prompt of a fixture's golden.json.</summary>
internal sealed record GoldenPrompt(
    int Index,
    string Name,
    int[] InputIds,
    float[] LastLogits,
    int[] Argmax,
    int[]? ArgmaxPositions,
    Dictionary<int, int[]> ExpertsTop1,
    int[]? ExpertsPositions,
    int[] NewTokens,
    Dictionary<int, int[]> FedTokenExpertsTop1);

/// <summary>A fixture's golden.json, parsed.</summary>
internal sealed class GoldenFixture
{
    private GoldenFixture(string name, string directory, double logitTolerance, IReadOnlyList<GoldenPrompt> prompts, string tensorsFile)
    {
        Name = name;
        Directory = directory;
        LogitTolerance = logitTolerance;
        Prompts = prompts;
        TensorsFile = tensorsFile;
    }

    /// <summary>The golden safetensors file (hidden states per layer) beside the json.</summary>
    public string TensorsFile { get; }

    public string Name { get; }

    public string Directory { get; }

    public double LogitTolerance { get; }

    public IReadOnlyList<GoldenPrompt> Prompts { get; }

    /// <summary>Parses <paramref name="file"/> (default <c>golden.json</c>; <c>tiny-maverick-fp8</c> also has <c>golden_fp8_act.json</c>).</summary>
    public static GoldenFixture Load(string name, string file = "golden.json")
    {
        string dir = TestPaths.Fixture(name);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, file)));
        var root = doc.RootElement;
        string tensors = root.TryGetProperty("golden_safetensors", out var gs) ? gs.GetString()! : "golden.safetensors";
        double tol = root.GetProperty("tolerances").GetProperty("last_logits_max_abs").GetDouble();
        var prompts = new List<GoldenPrompt>();
        int i = 0;
        foreach (var p in root.GetProperty("prompts").EnumerateArray())
        {
            var greedy = p.GetProperty("greedy");
            prompts.Add(new GoldenPrompt(
                i++,
                p.GetProperty("name").GetString()!,
                Ints(p.GetProperty("input_ids")),
                p.GetProperty("last_logits").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray(),
                Ints(p.GetProperty("argmax")),
                p.TryGetProperty("argmax_positions", out var ap) ? Ints(ap) : null,
                p.GetProperty("experts").EnumerateObject().ToDictionary(e => int.Parse(e.Name), e => Ints(e.Value.GetProperty("top1"))),
                p.TryGetProperty("experts_positions", out var ep) ? Ints(ep) : null,
                Ints(greedy.GetProperty("new_tokens")),
                greedy.GetProperty("experts_top1_of_fed_tokens").EnumerateObject().ToDictionary(e => int.Parse(e.Name), e => Ints(e.Value))));
        }
        return new GoldenFixture(name, dir, tol, prompts, tensors);
    }

    private static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}
