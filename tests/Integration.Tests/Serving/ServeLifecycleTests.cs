using System.Diagnostics;
using System.Net;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>Start-up failures and graceful shutdown of the real serve process.</summary>
[Trait("Category", "Integration")]
public sealed class ServeLifecycleTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Http2PortStreams_ThenSigtermStopsGracefullyWithExitCodeZero()
    {
        await using var server = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"), ["--http2-port", "0"], output);
        string h2Line = server.Lines.Single(l => l.StartsWith("http2 prior-knowledge (h2c) port at http://", StringComparison.Ordinal));
        string h2Address = h2Line.Split(' ')[^1];
        Assert.NotEqual(server.BaseAddress, h2Address);
        var golden = ServeFixture.Golden[1];
        using (var client = new HttpClient { BaseAddress = new Uri(h2Address), DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact })
        {
            var chunks = await SseClient.StreamAsync(client, "/v1/completions",
                $$"""{"model":"tiny-maverick","prompt":[{{string.Join(",", golden.InputIds)}}],"max_tokens":{{golden.NewTokens.Length}},"temperature":0,"stream":true,"return_token_ids":true}""");
            Assert.Equal(golden.NewTokens, chunks.SelectMany(c => SseClient.Ints(c.GetProperty("choices")[0].GetProperty("token_ids"))));
        }
        int code = await server.TerminateAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(0, code);
        Assert.Contains(server.Lines, l => l == "serve: stopped");
    }

    [Fact]
    public async Task ModelDirectoryWithoutTokenizer_ExitsOneNamingTheFile()
    {
        string dir = Directory.CreateTempSubdirectory("serve-no-tokenizer-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(TestPaths.Fixture("tiny-maverick")).Where(f => !Path.GetFileName(f).StartsWith("tokenizer", StringComparison.Ordinal)))
            {
                File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            }
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in new[] { TestPaths.CoordinatorDll, "serve", "--model", dir, "--port", "0" })
            {
                psi.ArgumentList.Add(a);
            }
            using var process = Process.Start(psi)!;
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
            await process.WaitForExitAsync(timeout.Token);
            output.WriteLine(await stderr);
            Assert.Equal(1, process.ExitCode);
            Assert.Contains("tokenizer.json", await stderr);
            Assert.DoesNotContain("listening on", await stdout);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
