using System.Diagnostics;
using System.Text.Json;
using Distributed.Coordinator.Cli;
using Xunit.Abstractions;

namespace Distributed.Coordinator.Tests.Cli;

[Trait("Category", "Integration")]
public sealed class InferCommandTests(ITestOutputHelper output)
{
    private static async Task<(int Code, string Stdout, string Stderr)> RunAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await CommandLine.RunAsync(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public async Task Infer_Json_PrintsOneObjectMatchingGolden()
    {
        string dir = TestPaths.Fixture("tiny-maverick");
        using var golden = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "golden.json")));
        var p = golden.RootElement.GetProperty("prompts")[1];
        string ids = string.Join(",", p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()));

        // fp32 KV, as the fixture was made: with a CUDA library present (e.g. the emulator) Auto picks CUDA, whose default
        // bf16 KV moves the greedy continuation of this prompt at token 11.
        var (code, stdout, stderr) = await RunAsync("infer", "--model", dir, "--prompt-ids", ids, "--max-new-tokens", "16", "--json", "--kv-dtype", "fp32");
        output.WriteLine(stderr);
        Assert.Equal(0, code);
        Assert.Single(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        using var doc = JsonDocument.Parse(stdout);
        var r = doc.RootElement;
        Assert.Equal(["prompt_ids", "last_logits", "argmax", "experts", "new_tokens"], r.EnumerateObject().Select(o => o.Name));
        Assert.Equal(512, r.GetProperty("last_logits").GetArrayLength());
        Assert.Equal(p.GetProperty("argmax").EnumerateArray().Select(e => e.GetInt32()), r.GetProperty("argmax").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(p.GetProperty("greedy").GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()),
            r.GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(["1", "3", "5"], r.GetProperty("experts").EnumerateObject().Select(o => o.Name));
        Assert.Equal(p.GetProperty("experts").GetProperty("3").GetProperty("top1").EnumerateArray().Select(e => e.GetInt32()),
            r.GetProperty("experts").GetProperty("3").EnumerateArray().Select(e => e[0].GetInt32()));
        double maxDiff = r.GetProperty("last_logits").EnumerateArray().Zip(p.GetProperty("last_logits").EnumerateArray())
            .Max(z => Math.Abs(z.First.GetDouble() - z.Second.GetDouble()));
        Assert.True(maxDiff <= 2e-3, $"last_logits max |diff| {maxDiff}");
    }

    [Theory]
    [InlineData(2, "unknown command 'frobnicate'", "frobnicate")]
    [InlineData(2, "missing required option --model", "infer", "--prompt-ids", "1")]
    [InlineData(2, "does not exist", "infer", "--model", "/nonexistent/dir", "--prompt-ids", "1")]
    [InlineData(2, "unknown option --bogus", "infer", "--bogus")]
    [InlineData(2, "'x' is not an integer", "infer", "--model", "{fixture}", "--prompt-ids", "1,x")]
    [InlineData(2, "--max-new-tokens must be an integer", "infer", "--model", "{fixture}", "--prompt-ids", "1", "--max-new-tokens", "-3")]
    [InlineData(2, "--device-path 'sometimes' must be on or off", "infer", "--model", "{fixture}", "--prompt-ids", "1", "--device-path", "sometimes")]
    [InlineData(2, "--device-path 'x' must be on or off", "bench", "--model", "{fixture}", "--device-path", "x")]
    [InlineData(2, "--cuda-graphs 'often' must be on or off", "infer", "--model", "{fixture}", "--prompt-ids", "1", "--cuda-graphs", "often")]
    [InlineData(2, "--cuda-graphs 'x' must be on or off", "bench", "--model", "{fixture}", "--cuda-graphs", "x")]
    [InlineData(1, "outside the vocabulary", "infer", "--model", "{fixture}", "--prompt-ids", "1,512")]
    [InlineData(1, "exceeds max_position_embeddings", "infer", "--model", "{fixture}", "--prompt-ids", "1", "--max-new-tokens", "5000")]
    public async Task Infer_BadArguments_ExitNonZeroWithOneLineReason(int expectedCode, string reason, params string[] args)
    {
        string dir = TestPaths.Fixture("tiny-maverick");
        var (code, stdout, stderr) = await RunAsync(args.Select(a => a.Replace("{fixture}", dir)).ToArray());
        Assert.Equal(expectedCode, code);
        Assert.Equal("", stdout);
        var errorLines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:", StringComparison.Ordinal)).ToList();
        Assert.Single(errorLines);
        Assert.Contains(reason, errorLines[0]);
    }

    [Fact]
    public async Task Infer_BadModelDirectory_ExitsOneNamingTheProblem()
    {
        string dir = Directory.CreateTempSubdirectory("bad-model-").FullName;
        try
        {
            var (code, _, stderr) = await RunAsync("infer", "--model", dir, "--prompt-ids", "1");
            Assert.Equal(1, code);
            Assert.Contains("config.json", stderr);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Infer_RealProcess_StdoutIsOneJsonObject_LogsOnStderr()
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { TestPaths.CoordinatorDll, "infer", "--model", TestPaths.Fixture("tiny-scout"), "--prompt-ids", "500,12,7", "--max-new-tokens", "4", "--json" })
        {
            psi.ArgumentList.Add(a);
        }
        using var process = Process.Start(psi)!;
        try
        {
            var stdoutTask = process.StandardOutput.ReadToEndAsync();
            var stderrTask = process.StandardError.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            await process.WaitForExitAsync(timeout.Token);
            string stdout = await stdoutTask, stderr = await stderrTask;
            output.WriteLine(stderr);
            Assert.Equal(0, process.ExitCode);
            using var doc = JsonDocument.Parse(stdout);
            Assert.Equal(4, doc.RootElement.GetProperty("new_tokens").GetArrayLength());
            Assert.Equal(3, doc.RootElement.GetProperty("argmax").GetArrayLength());
            Assert.Contains("loaded", stderr);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }
}
