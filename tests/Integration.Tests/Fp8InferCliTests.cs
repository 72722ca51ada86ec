using System.Collections.Concurrent;
using System.Text.Json;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Scheduling;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// FP8 experts end to end through <c>infer</c>: the compressed-tensors release (<c>tiny-maverick-fp8</c>) and
/// <c>--quantize fp8</c> on its bf16 source (<c>tiny-maverick-mm</c>), weight-only and W8A8 (<c>--fp8-activations</c>),
/// in process and on two local workers with fp32 on the wire (bitwise the in-process JSON), judged by the fixture's
/// goldens; workers that disagree with the coordinator on quantization or activations are refused.
/// </summary>
[Trait("Category", "Integration")]
public sealed class Fp8InferCliTests(ITestOutputHelper output)
{
    private const string Fp8 = "tiny-maverick-fp8";

    // Prompt 1 of the FP8 goldens (7 tokens); every decision of it has the fixture's margins in both semantics.
    private static readonly int[] Prompt = Golden.Load(Fp8).Prompts[1].InputIds;

    private async Task<(int Code, string Stdout, string Stderr)> InferAsync(string model, params string[] extra)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync(
            ["infer", "--model", TestPaths.Fixture(model), "--prompt-ids", string.Join(",", Prompt), "--max-new-tokens", "16", "--json", "--threads", "1", .. extra],
            stdout, stderr);
        output.WriteLine(stderr.ToString());
        return (rc, stdout.ToString(), stderr.ToString());
    }

    private async Task<string> InferOkAsync(string model, params string[] extra)
    {
        var (rc, stdout, _) = await InferAsync(model, extra);
        Assert.Equal(0, rc);
        return stdout;
    }

    /// <summary>The infer JSON as a result, checked against prompt 1 of <paramref name="goldenFile"/>.</summary>
    private void AssertMatchesGolden(string json, string goldenFile)
    {
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
        var experts = root.GetProperty("experts").EnumerateObject().ToDictionary(
            e => int.Parse(e.Name), e => e.Value.EnumerateArray().Select(Ints).ToArray() as int[][]);
        var result = new InferenceResult(Ints(root.GetProperty("prompt_ids")), [.. root.GetProperty("last_logits").EnumerateArray().Select(x => x.GetSingle())],
            Ints(root.GetProperty("argmax")), experts, Ints(root.GetProperty("new_tokens")));
        var golden = Golden.Load(Fp8, goldenFile);
        var (failures, maxError) = golden.Check(golden.Prompts[1], result, checkLogits: true);
        output.WriteLine($"{goldenFile}: last-logit max |diff| {maxError:E3} (tolerance {golden.LogitTolerance})");
        Assert.True(failures.Count == 0, string.Join("; ", failures));
    }

    [Fact]
    public async Task Fp8Release_WeightOnlyAndW8A8_OnTwoLocalWorkers_PrintTheInProcessJson_WhichMatchesTheGoldens()
    {
        foreach (var (flags, golden) in new[] { (Array.Empty<string>(), "golden.json"), (new[] { "--fp8-activations" }, "golden_fp8_act.json") })
        {
            string inProcess = await InferOkAsync(Fp8, flags);
            AssertMatchesGolden(inProcess, golden);
            string distributed = await InferOkAsync(Fp8, [.. flags, "--local-workers", "2", "--wire", "fp32"]);
            Assert.Equal(inProcess, distributed);
        }
    }

    /// <summary>
    /// <c>--quantize fp8</c> on the bf16 source gives the FP8 release's codes and scales, so the run (in process and on
    /// two workers that quantize their own experts) prints exactly the FP8 release's JSON.
    /// </summary>
    [Fact]
    public async Task QuantizeFp8_OnTheBf16Source_InProcessAndOnTwoLocalWorkers_PrintsTheFp8ReleasesJson()
    {
        string release = await InferOkAsync(Fp8);
        Assert.Equal(release, await InferOkAsync("tiny-maverick-mm", "--quantize", "fp8"));
        Assert.Equal(release, await InferOkAsync("tiny-maverick-mm", "--quantize", "fp8", "--local-workers", "2", "--wire", "fp32"));
        Assert.NotEqual(release, await InferOkAsync("tiny-maverick-mm"));
    }

    private async Task<(WorkerProcess A, WorkerProcess B, string Addresses)> StartTwoWorkersAsync(string model, params string[] extra)
    {
        var log = new TestLog { Output = output };
        var a = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture(model), "--experts", "1:0-127,3:0-63", "--threads", "1", "--worker-id", "fp8-a", .. extra], "a", log.Write);
        var b = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture(model), "--experts", "3:64-127,5:0-127", "--threads", "1", "--worker-id", "fp8-b", .. extra], "b", log.Write);
        try
        {
            string addrA = await a.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
            string addrB = await b.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
            return (a, b, $"{addrA},{addrB}");
        }
        catch
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Running W8A8 workers serve a coordinator that asks for W8A8 (bitwise its in-process JSON) and refuse one that
    /// expects weight-only, naming both semantics; workers that did not quantize refuse a coordinator that did (the
    /// quantized model's fingerprint differs).
    /// </summary>
    [Fact]
    public async Task RunningWorkers_ActivationOrQuantizationMismatch_IsRefusedNamingIt()
    {
        var (a, b, addresses) = await StartTwoWorkersAsync(Fp8, "--fp8-activations", "true");
        await using (a)
        await using (b)
        {
            Assert.Equal(await InferOkAsync(Fp8, "--fp8-activations"), await InferOkAsync(Fp8, "--fp8-activations", "--workers", addresses, "--wire", "fp32"));
            var (rc, _, stderr) = await InferAsync(Fp8, "--workers", addresses, "--wire", "fp32");
            Assert.Equal(1, rc);
            Assert.Contains("computes its FP8 experts with fp8-per-token activations, this coordinator with weight-only", stderr, StringComparison.Ordinal);
        }
        var (c, d, plain) = await StartTwoWorkersAsync("tiny-maverick-mm");
        await using (c)
        await using (d)
        {
            var (rc, _, stderr) = await InferAsync("tiny-maverick-mm", "--quantize", "fp8", "--workers", plain, "--wire", "fp32");
            Assert.Equal(1, rc);
            Assert.Contains("!= worker model", stderr, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// <c>--wire fp8</c>: rows dispatched as E4M3 with a per-row scale, replies in bf16. What is exactly testable: the
    /// two-worker run prints bitwise the JSON of the in-process run that rounds its rows the same way (<c>--wire fp8</c>
    /// without workers), greedy tokens and all. Against exact fp32 experts the stated tolerance is: prefill argmax equal
    /// at every position, last logits within 0.25 (measured 0.114 on this prompt; bf16 on the wire: 0.0126). Routing of
    /// later MoE layers and the greedy continuation of this random tiny model have small margins and may move (the
    /// continuation does here from the sixth token), so they are compared with the rounded in-process run only.
    /// </summary>
    [Fact]
    public async Task WireFp8_OnTwoLocalWorkers_EqualsTheInProcessRunWithTheSameRounding_AndStaysNearFp32()
    {
        string[] common = ["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "500,17,300,42", "--max-new-tokens", "16", "--json", "--threads", "1"];
        async Task<string> Run(params string[] extra)
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int rc = await CommandLine.RunAsync([.. common, .. extra], stdout, stderr);
            output.WriteLine(stderr.ToString());
            Assert.Equal(0, rc);
            return stdout.ToString();
        }
        string exact = await Run();
        string rounded = await Run("--wire", "fp8");
        Assert.Equal(rounded, await Run("--wire", "fp8", "--local-workers", "2"));
        Assert.NotEqual(exact, rounded);
        using var e = JsonDocument.Parse(exact);
        using var r = JsonDocument.Parse(rounded);
        double worst = e.RootElement.GetProperty("last_logits").EnumerateArray().Zip(r.RootElement.GetProperty("last_logits").EnumerateArray())
            .Max(p => Math.Abs(p.First.GetDouble() - p.Second.GetDouble()));
        output.WriteLine($"--wire fp8 against exact fp32 experts: last-logit max |diff| {worst:E3}");
        Assert.InRange(worst, 0, 0.25);
        Assert.Equal(e.RootElement.GetProperty("argmax").GetRawText(), r.RootElement.GetProperty("argmax").GetRawText());
    }

    [Theory]
    [InlineData(Fp8, "--quantize", "fp8", "already FP8")]
    [InlineData("tiny-maverick", "--fp8-activations", null, "--fp8-activations needs FP8 experts")]
    [InlineData("tiny-maverick", "--quantize", "int4", "--quantize 'int4' must be none or fp8")]
    public async Task ExpertOptionsThatDoNotApply_AreUsageErrors(string model, string option, string? value, string expected)
    {
        var (rc, stdout, stderr) = await InferAsync(model, value is null ? [option] : [option, value]);
        Assert.Equal(2, rc);
        Assert.Equal("", stdout);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
    }

    /// <summary>A worker told to compute W8A8 on bf16 experts exits 2 (bad configuration) naming the settings and why.</summary>
    [Fact]
    public async Task Worker_Fp8ActivationsOnBf16Experts_ExitsWithCode2NamingIt()
    {
        var lines = new ConcurrentQueue<string>();
        var log = new TestLog { Output = output };
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--threads", "1", "--worker-id", "w8a8-bf16", "--experts", "1:0-127", "--fp8-activations", "true"],
            "w8a8-bf16", line =>
            {
                lines.Enqueue(line);
                log.Write(line);
            });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await worker.WaitForExitAsync(timeout.Token);
        Assert.Equal(2, worker.ExitCode);
        Assert.Contains(lines, l => l.Contains("ExpertWorker:Quantize / ExpertWorker:Fp8Activations: --fp8-activations needs FP8 experts", StringComparison.Ordinal));
    }
}
