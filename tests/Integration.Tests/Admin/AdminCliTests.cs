using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Cli;
using Distributed.Integration.Tests.Serving;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Admin;

/// <summary>
/// The real <c>serve --local-workers 2 --admin-port 0</c> process with its token in an environment variable, driven by
/// the <c>admin</c> subcommands of the coordinator executable: reads, a dry-run rebalance, a replica, a drain (each
/// followed with <c>--wait</c>), while the OpenAI endpoint keeps answering; wrong or missing tokens are refused.
/// </summary>
[Trait("Category", "Integration")]
public sealed class AdminCliTests(ITestOutputHelper output)
{
    private const string TokenVariable = "DISTRIBUTED_ADMIN_TOKEN_CLI_TEST";
    private const string Token = "cli-test-token-abcdef0123456789";

    private static async Task<(int Code, string Out, string Err)> AdminAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await CommandLine.RunAsync(["admin", .. args], stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public async Task AdminCommands_AgainstServe_ReadChangeAndRefuse()
    {
        Environment.SetEnvironmentVariable(TokenVariable, Token);
        try
        {
            await using var serve = await ServeProcess.StartAsync(TestPaths.Fixture("tiny-maverick"),
                ["--local-workers", "2", "--wire", "fp32", "--admin-port", "0", "--admin-token-env", TokenVariable], output);
            string line = serve.Lines.First(l => l.StartsWith("admin API at ", StringComparison.Ordinal));
            string url = line["admin API at ".Length..].Split(' ')[0].Replace("/admin/v1", "", StringComparison.Ordinal);
            Assert.DoesNotContain(serve.Lines, l => l.Contains(Token, StringComparison.Ordinal));
            string[] common = ["--url", url, "--token-env", TokenVariable];

            var (code, stdout, stderr) = await AdminAsync(["cluster", .. common]);
            Assert.True(code == 0, stderr);
            using (var doc = JsonDocument.Parse(stdout))
            {
                Assert.Equal(2, doc.RootElement.GetProperty("workers").GetArrayLength());
                Assert.True(doc.RootElement.GetProperty("serving").GetBoolean());
            }
            (code, stdout, stderr) = await AdminAsync(["placement", .. common]);
            Assert.True(code == 0, stderr);
            int moe;
            using (var doc = JsonDocument.Parse(stdout))
            {
                moe = doc.RootElement.GetProperty("layers")[0].GetProperty("layer").GetInt32();
            }
            (code, stdout, stderr) = await AdminAsync(["load", .. common]);
            Assert.True(code == 0, stderr);
            Assert.Contains("\"recent_tokens\"", stdout);

            (code, stdout, stderr) = await AdminAsync(["rebalance", "--dry-run", .. common]);
            Assert.True(code == 0, stderr);
            Assert.Contains("\"dry_run\": true", stdout);

            (code, stdout, stderr) = await AdminAsync(["replicas", "add", $"{moe}:0@worker-1", $"{moe}:1", "--wait", .. common]);
            output.WriteLine(stdout);
            Assert.True(code == 0, stderr);
            Assert.Contains("\"state\": \"Completed\"", stdout);

            (code, stdout, stderr) = await AdminAsync(["drain", "worker-1", "--wait", .. common]);
            Assert.True(code == 0, stderr);
            Assert.Contains("\"kind\": \"Drain\"", stdout);
            Assert.Contains("\"state\": \"Completed\"", stdout);
            (code, stdout, _) = await AdminAsync(["cluster", .. common]);
            Assert.Contains("\"state\": \"Drained\"", stdout);

            using var http = new HttpClient { BaseAddress = new Uri(serve.BaseAddress) };
            var completion = await http.PostAsync("/v1/completions",
                new StringContent("""{"model":"tiny-maverick","prompt":"hello","max_tokens":4,"temperature":0}""", Encoding.UTF8, "application/json"));
            Assert.True(completion.IsSuccessStatusCode, await completion.Content.ReadAsStringAsync());
            // The admin listener (its own port) reads the serving host's scheduler.
            (code, stdout, stderr) = await AdminAsync(["serving", .. common]);
            Assert.True(code == 0, stderr);
            using (var doc = JsonDocument.Parse(stdout))
            {
                Assert.True(doc.RootElement.GetProperty("tokens_generated").GetInt64() >= 1, stdout);
                Assert.True(doc.RootElement.GetProperty("requests_finished").GetInt64() >= 1, stdout);
                Assert.True(doc.RootElement.GetProperty("kv_blocks_total").GetInt32() > 0, stdout);
            }

            (code, _, stderr) = await AdminAsync(["drain", "worker-0", .. common]);
            Assert.Equal(1, code);
            Assert.Contains("409 last_holder", stderr);
            (code, _, stderr) = await AdminAsync(["drain", "nobody", .. common]);
            Assert.Equal(1, code);
            Assert.Contains("404 unknown_worker", stderr);
            (code, _, stderr) = await AdminAsync("cluster", "--url", url, "--token", "wrong-token-wrong-token");
            Assert.Equal(1, code);
            Assert.Contains("401 unauthorized", stderr);
            (code, _, stderr) = await AdminAsync("cluster", "--url", url, "--token-env", "DISTRIBUTED_ADMIN_TOKEN_NOT_SET_ANYWHERE");
            Assert.Equal(2, code);
            Assert.Contains("no admin token", stderr);
            (code, _, stderr) = await AdminAsync(["replicas", "add", "one:two", .. common]);
            Assert.Equal(2, code);
            Assert.Contains("LAYER:EXPERT", stderr);
        }
        finally
        {
            Environment.SetEnvironmentVariable(TokenVariable, null);
        }
    }
}
