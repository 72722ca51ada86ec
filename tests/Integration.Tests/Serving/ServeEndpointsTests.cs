using System.Net;
using System.Text.Json;
using Xunit.Abstractions;
using static Distributed.Integration.Tests.Serving.SseClient;

namespace Distributed.Integration.Tests.Serving;

/// <summary>The real serve process on tiny-maverick driven over HTTP as a user would.</summary>
[Trait("Category", "Integration")]
public sealed class ServeEndpointsTests : IClassFixture<ServeFixture>
{
    private const string Model = ServeFixture.ModelId;
    private readonly ServeFixture _fixture;

    public ServeEndpointsTests(ServeFixture fixture, ITestOutputHelper output)
    {
        _fixture = fixture;
        fixture.Server.Output = output;
    }

    private HttpClient Client => _fixture.Client;

    private static string GreedyBody(GoldenPrompt p, bool stream, string extra = "") => ServeScenarios.GreedyBody(p, stream, extra);

    [Fact]
    public async Task Models_ListsTheFixtureByDirectoryName()
    {
        using var doc = JsonDocument.Parse(await Client.GetStringAsync("/v1/models"));
        var model = Assert.Single(doc.RootElement.GetProperty("data").EnumerateArray());
        Assert.Equal(Model, model.GetProperty("id").GetString());
        Assert.Equal(4096, model.GetProperty("max_model_len").GetInt32());
    }

    [Fact]
    public Task InferAndServe_SameGreedyTokens() => ServeScenarios.InferAndServeAgreeAsync(Client);

    [Fact]
    public async Task Completion_TokenIdPrompts_GreedyTokensEqualGolden()
    {
        await ServeScenarios.GoldenGreedyAsync(Client);
    }

    [Fact]
    public async Task Streaming_SseChunksCarryTheGoldenTokensInOrder()
    {
        var p = ServeFixture.Golden[2];
        var chunks = await StreamAsync(Client, "/v1/completions", GreedyBody(p, stream: true, ""","stream_options":{"include_usage":true}"""));
        var usage = chunks[^1];
        Assert.Empty(usage.GetProperty("choices").EnumerateArray());
        Assert.Equal(p.NewTokens.Length, usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var content = chunks.SkipLast(1).ToList();
        Assert.Equal(p.NewTokens, content.SelectMany(c => Ints(c.GetProperty("choices")[0].GetProperty("token_ids"))));
        Assert.Equal(ServeFixture.Tokenizer.Decode(p.NewTokens, skipSpecialTokens: true),
            string.Concat(content.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal("length", content[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Single(content.Select(c => c.GetProperty("id").GetString()).Distinct());
    }

    [Fact]
    public async Task Chat_StreamingAndNot_SameGreedyAnswer()
    {
        const string messages = """[{"role":"system","content":"You are terse."},{"role":"user","content":"Name a colour."}]""";
        var (status, body, _) = await PostAsync(Client, "/v1/chat/completions",
            $$"""{"model":"{{Model}}","messages":{{messages}},"max_completion_tokens":12,"temperature":0,"return_token_ids":true}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = body.GetProperty("choices")[0];
        string text = choice.GetProperty("message").GetProperty("content").GetString()!;
        int[] tokens = Ints(choice.GetProperty("token_ids"));
        int[] prompt = Ints(choice.GetProperty("prompt_token_ids"));
        Assert.Equal(ServeFixture.Tokenizer.EncodeChat(
            [Distributed.Coordinator.Serving.Tokenization.ChatMessage.System("You are terse."), Distributed.Coordinator.Serving.Tokenization.ChatMessage.User("Name a colour.")]), prompt);
        Assert.Equal(prompt.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        var chunks = await StreamAsync(Client, "/v1/chat/completions",
            $$"""{"model":"{{Model}}","messages":{{messages}},"max_tokens":12,"temperature":0,"stream":true,"return_token_ids":true}""");
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        Assert.Equal(text, string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var t) ? t.GetString() : "")));
        Assert.Equal(tokens, chunks.SelectMany(c => Ints(c.GetProperty("choices")[0].GetProperty("token_ids"))));
        Assert.Equal(choice.GetProperty("finish_reason").GetString(), chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task EightConcurrentClients_AllGetTheirGoldenTokens()
    {
        await ServeScenarios.ConcurrentClientsAsync(Client, 8);
    }

    [Fact]
    public async Task ClientDisconnectsMidStream_ServerKeepsServingOthers()
    {
        await ServeScenarios.DisconnectMidStreamAsync(Client, _fixture.Server);
    }

    [Fact]
    public async Task StopSequence_OnRealTokens_TextEndsBeforeIt()
    {
        var p = ServeFixture.Golden[1];
        string full = ServeFixture.Tokenizer.Decode(p.NewTokens, skipSpecialTokens: true);
        int at = Enumerable.Range(full.Length / 3, full.Length / 2).First(i => char.IsLetter(full[i]) && char.IsLetter(full[i + 1]));
        string stop = full.Substring(at, 2);
        var (status, body, _) = await PostAsync(Client, "/v1/completions", GreedyBody(p, stream: false, $$""","stop":{{JsonSerializer.Serialize(stop)}}"""));
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], choice.GetProperty("text").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task SeededSampling_Reproducible()
    {
        string body = $$"""{"model":"{{Model}}","prompt":"Once upon a time","max_tokens":12,"temperature":1.0,"top_p":0.9,"top_k":50,"seed":1234,"return_token_ids":true}""";
        var (s1, b1, _) = await PostAsync(Client, "/v1/completions", body);
        var (s2, b2, _) = await PostAsync(Client, "/v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.Equal(Ints(b1.GetProperty("choices")[0].GetProperty("token_ids")), Ints(b2.GetProperty("choices")[0].GetProperty("token_ids")));
    }

    [Theory]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":[1],"temperature":5}""", "temperature")]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":[1],"max_tokens":5000}""", "max_tokens")]
    [InlineData("/v1/completions", """{"model":"other","prompt":[1]}""", "model")]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":[512]}""", "prompt[0]")]
    [InlineData("/v1/chat/completions", """{"model":"tiny-maverick","messages":[]}""", "messages")]
    [InlineData("/v1/chat/completions", """{"model":"tiny-maverick","messages":[{"role":"user","content":"x"}],"n":65}""", "n")]
    public async Task ValidationErrors_400WithTheField(string path, string json, string param)
    {
        var (status, body, _) = await PostAsync(Client, path, json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, body.GetProperty("error").GetProperty("param").GetString());
        Assert.Equal("invalid_request_error", body.GetProperty("error").GetProperty("type").GetString());
    }

    [Fact]
    public async Task UnknownRouteAndOversizedBody_404And413_ThenStillServing()
    {
        var missing = await Client.GetAsync("/v2/models");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("\"code\":\"not_found\"", await missing.Content.ReadAsStringAsync());

        // 5 MiB against the default 4 MiB limit. With Expect: 100-continue the server answers 413 from the headers
        // alone, so the client never pushes the whole body into a closed connection.
        string huge = $$"""{"model":"{{Model}}","prompt":"{{new string('a', 5 << 20)}}"}""";
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json(huge) };
        request.Headers.ExpectContinue = true;
        using var tooLarge = await Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, tooLarge.StatusCode);
        using (var doc = JsonDocument.Parse(await tooLarge.Content.ReadAsStringAsync()))
        {
            Assert.Equal("request_too_large", doc.RootElement.GetProperty("error").GetProperty("code").GetString());
        }

        var p = ServeFixture.Golden[0];
        var (ok, okBody, _) = await PostAsync(Client, "/v1/completions", GreedyBody(p, stream: false));
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.Equal(p.NewTokens, Ints(okBody.GetProperty("choices")[0].GetProperty("token_ids")));
    }
}
