using System.Text.Json;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Integration.Tests.Serving;

/// <summary>One greedy reference from the fixture's golden.json.</summary>
internal sealed record GoldenPrompt(string Name, int[] InputIds, int[] NewTokens);

/// <summary>One <c>serve</c> process on tiny-maverick shared by a test class (default settings).</summary>
public class ServeFixture : IAsyncLifetime
{
    internal const string ModelId = "tiny-maverick";

    internal ServeProcess Server { get; private set; } = null!;

    internal HttpClient Client { get; private set; } = null!;

    internal static Llama4Tokenizer Tokenizer { get; } = Llama4Tokenizer.Load(TestPaths.Fixture(ModelId));

    internal static IReadOnlyList<GoldenPrompt> Golden { get; } = LoadGolden();

    protected virtual string[] ExtraArgs => [];

    public async Task InitializeAsync()
    {
        Server = await ServeProcess.StartAsync(TestPaths.Fixture(ModelId), ExtraArgs);
        Client = new HttpClient { BaseAddress = new Uri(Server.BaseAddress), Timeout = TimeSpan.FromMinutes(2) };
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        await Server.DisposeAsync();
    }

    private static GoldenPrompt[] LoadGolden()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TestPaths.Fixture(ModelId), "golden.json")));
        return doc.RootElement.GetProperty("prompts").EnumerateArray().Select(p => new GoldenPrompt(
            p.GetProperty("name").GetString()!,
            SseClient.Ints(p.GetProperty("input_ids")),
            SseClient.Ints(p.GetProperty("greedy").GetProperty("new_tokens")))).ToArray();
    }
}

/// <summary>A server that admits one running sequence and queues one more: everything beyond gets 429.</summary>
public sealed class TinyQueueServeFixture : ServeFixture
{
    protected override string[] ExtraArgs => ["--max-queue", "1", "--max-running", "1"];
}
