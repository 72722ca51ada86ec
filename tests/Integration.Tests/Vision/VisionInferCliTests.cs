using System.Text.Json;
using Distributed.Coordinator.Cli;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Vision;

/// <summary>
/// <c>infer --image</c> on every golden_vision.json case: in process, and with the routed experts on two local worker
/// processes (<c>--local-workers 2 --wire fp32</c>), the JSON is identical and matches the golden expanded ids, last logits
/// (≤ 2e-3), argmax, routing and greedy tokens.
/// </summary>
[Trait("Category", "Integration")]
public sealed class VisionInferCliTests(ITestOutputHelper output)
{
    private static readonly VisionGolden Golden = VisionGolden.Load(TestPaths.Fixture(VisionGolden.FixtureName));

    public static TheoryData<int> Cases()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Golden.Cases.Count; i++)
        {
            data.Add(i);
        }
        return data;
    }

    private async Task<string> RunAsync(VisionGoldenCase c, params string[] extra)
    {
        var args = new List<string> { "infer", "--model", Golden.Directory, "--prompt-ids", string.Join(",", c.PromptIds), "--max-new-tokens",
            c.NewTokens.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), "--json", "--threads", "1",
            "--max-image-tiles", c.MaxPatches.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        foreach (var image in c.Images)
        {
            args.AddRange(["--image", Path.Combine(Golden.Directory, image.File)]);
        }
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync([.. args, .. extra], stdout, stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, rc);
        return stdout.ToString();
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task GoldenCase_InProcessAndOnTwoWorkers_PrintTheSameGoldenJson(int index)
    {
        var c = Golden.Cases[index];
        string inProcess = await RunAsync(c);
        string distributed = await RunAsync(c, "--local-workers", "2", "--wire", "fp32");
        Assert.Equal(inProcess, distributed);

        using var doc = JsonDocument.Parse(inProcess);
        var root = doc.RootElement;
        Assert.Equal(c.InputIds, Ints(root.GetProperty("prompt_ids")));
        float[] last = [.. root.GetProperty("last_logits").EnumerateArray().Select(e => e.GetSingle())];
        double worst = last.Select((v, j) => (double)Math.Abs(v - c.LastLogits[j])).Max();
        Assert.True(worst <= Golden.LogitTolerance, $"{c.Name}: last logits max |diff| {worst:E3}");
        Assert.Equal(c.Argmax, Ints(root.GetProperty("argmax")));
        foreach (var (layer, expected) in c.ExpertsTop1)
        {
            Assert.Equal(expected, root.GetProperty("experts").GetProperty(layer.ToString(System.Globalization.CultureInfo.InvariantCulture))
                .EnumerateArray().Select(e => e[0].GetInt32()).ToArray());
        }
        Assert.Equal(c.NewTokens, Ints(root.GetProperty("new_tokens")));
    }

    [Fact]
    public async Task ImageCountMismatchAndBadFiles_AreClearErrors()
    {
        var c = Golden.Cases[3];
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync(["infer", "--model", Golden.Directory, "--prompt-ids", string.Join(",", c.PromptIds), "--threads", "1",
            "--image", Path.Combine(Golden.Directory, "images", "a.png")], new StringWriter(), stderr);
        Assert.Equal(2, rc);
        Assert.Contains("2 <|image|> token(s)", stderr.ToString(), StringComparison.Ordinal);

        string bad = Path.Combine(Path.GetTempPath(), $"not-an-image-{Guid.NewGuid():N}.png");
        await File.WriteAllTextAsync(bad, "this is not a PNG");
        try
        {
            stderr = new StringWriter();
            rc = await CommandLine.RunAsync(["infer", "--model", Golden.Directory, "--prompt-ids", "500,508,1", "--threads", "1", "--image", bad], new StringWriter(), stderr);
            Assert.Equal(1, rc);
            Assert.Contains($"--image {bad}: the data is not an image in a supported format", stderr.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(bad);
        }

        stderr = new StringWriter();
        rc = await CommandLine.RunAsync(["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "500,508,1", "--threads", "1",
            "--image", Path.Combine(Golden.Directory, "images", "a.png")], new StringWriter(), stderr);
        Assert.Equal(2, rc);
        Assert.Contains("has no vision tower", stderr.ToString(), StringComparison.Ordinal);
    }

    private static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
}
