using System.Net.Http.Json;
using System.Text.Json;
using Distributed.Coordinator.Cli;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>
/// <c>make-synthetic</c> writes a tokenizer with the checkpoint, so <c>serve</c> (and load tests through it) run on a
/// synthetic shape: text and chat completions answer, with experts on 2 local workers.
/// </summary>
[Trait("Category", "Integration")]
public sealed class ServeSyntheticModelTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"synthetic-serve-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Fact]
    public async Task SyntheticCheckpoint_ServesTextAndChatCompletions()
    {
        var log = new StringWriter();
        Assert.Equal(0, await CommandLine.RunAsync(["make-synthetic", "--out", _dir, "--preset", "tiny", "--vocab", "1024"], log, log));
        output.WriteLine(log.ToString());
        await using var server = await ServeProcess.StartAsync(_dir, ["--local-workers", "2", "--threads", "1"], output);
        using var client = new HttpClient { BaseAddress = new Uri(server.BaseAddress), Timeout = TimeSpan.FromSeconds(60) };

        using var completion = await client.PostAsJsonAsync("/v1/completions",
            new { model = Path.GetFileName(_dir), prompt = "hello world, the cat", max_tokens = 8, temperature = 0 });
        string body = await completion.Content.ReadAsStringAsync();
        output.WriteLine(body);
        Assert.True(completion.IsSuccessStatusCode, body);
        using (var doc = JsonDocument.Parse(body))
        {
            var usage = doc.RootElement.GetProperty("usage");
            Assert.True(usage.GetProperty("prompt_tokens").GetInt32() > 1);
            Assert.InRange(usage.GetProperty("completion_tokens").GetInt32(), 1, 8);
        }

        using var chat = await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = Path.GetFileName(_dir), messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 4 });
        string chatBody = await chat.Content.ReadAsStringAsync();
        output.WriteLine(chatBody);
        Assert.True(chat.IsSuccessStatusCode, chatBody);
        using var chatDoc = JsonDocument.Parse(chatBody);
        Assert.Equal("assistant", chatDoc.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("role").GetString());
    }
}
