using System.Diagnostics;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>Start-up failures and graceful shutdown of the real serve process.</summary>
[Trait("Category", "Integration")]
public sealed class ServeLifecycleTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Sigterm_StopsGracefullyWithExitCodeZero()
    {
        await using var server = await ServeProcess.StartAsync(ServingTestPaths.Fixture("tiny-maverick"), ["--http2-port", "0"], output);
        Assert.Contains(server.Lines, l => l.Contains("(HTTP/2 cleartext, prior knowledge)", StringComparison.Ordinal));
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
            foreach (var f in Directory.GetFiles(ServingTestPaths.Fixture("tiny-maverick")).Where(f => !Path.GetFileName(f).StartsWith("tokenizer", StringComparison.Ordinal)))
            {
                File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            }
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in new[] { ServingTestPaths.CoordinatorDll, "serve", "--model", dir, "--port", "0" })
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
