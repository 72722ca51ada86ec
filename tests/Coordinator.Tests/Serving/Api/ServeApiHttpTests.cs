using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Api;

/// <summary>The serve host over real Kestrel on loopback with a scripted scheduler: routes, formats, error mapping.</summary>
[Trait("Category", "Unit")]
public sealed class ServeApiHttpTests
{
    private const string Model = "tiny-maverick";

    private static Llama4Tokenizer Tokenizer => ApiTestServer.Tokenizer;

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private static async Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(ApiTestServer server, string path, string json)
    {
        var response = await server.Client.PostAsync(path, Json(json));
        string text = await response.Content.ReadAsStringAsync();
        using var doc = JsonDocument.Parse(text);
        return (response.StatusCode, doc.RootElement.Clone(), response);
    }

    private static void AssertError(JsonElement body, string type, string? param, string? code, string messagePart)
    {
        var error = body.GetProperty("error");
        Assert.Equal(["message", "type", "param", "code"], error.EnumerateObject().Select(p => p.Name));
        Assert.Equal(type, error.GetProperty("type").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Equal(code, error.GetProperty("code").GetString());
        Assert.Contains(messagePart, error.GetProperty("message").GetString());
    }

    private static async Task<List<JsonElement>> StreamAsync(ApiTestServer server, string path, string json)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = Json(json) };
        using var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var events = new List<string>();
        await foreach (var e in SseTestReader.ReadEventsAsync(await response.Content.ReadAsStreamAsync()))
        {
            events.Add(e);
        }
        Assert.Equal("[DONE]", events[^1]);
        Assert.DoesNotContain("[DONE]", events.SkipLast(1));
        return events.SkipLast(1).Select(e =>
        {
            using var doc = JsonDocument.Parse(e);
            return doc.RootElement.Clone();
        }).ToList();
    }

    [Fact]
    public async Task Chat_ImagePart_OnAModelWithoutVision_Is400NamingThePart_AndNothingIsScheduled()
    {
        var scheduler = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(scheduler);
        var (status, body, _) = await PostAsync(server, "/v1/chat/completions",
            """{"model":"tiny-maverick","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        AssertError(body, "invalid_request_error", "messages[0].content[1]", "images_not_supported", "does not accept images");
        Assert.Empty(scheduler.Requests);
    }

    [Fact]
    public async Task Models_ListsTheOneModel()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler());
        using var doc = JsonDocument.Parse(await server.Client.GetStringAsync("/v1/models"));
        Assert.Equal("list", doc.RootElement.GetProperty("object").GetString());
        var model = Assert.Single(doc.RootElement.GetProperty("data").EnumerateArray());
        Assert.Equal(Model, model.GetProperty("id").GetString());
        Assert.Equal("model", model.GetProperty("object").GetString());
        Assert.True(model.GetProperty("created").GetInt64() > 1_600_000_000);

        using var one = JsonDocument.Parse(await server.Client.GetStringAsync($"/v1/models/{Model}"));
        Assert.Equal(Model, one.RootElement.GetProperty("id").GetString());
        var missing = await server.Client.GetAsync("/v1/models/other");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        using var err = JsonDocument.Parse(await missing.Content.ReadAsStringAsync());
        AssertError(err.RootElement, "invalid_request_error", "model", "model_not_found", "'other' does not exist");
    }

    [Fact]
    public async Task ModelName_OverridesTheDirectoryName()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler(), o => o.ModelName = "org/llama-4-test");
        using var one = JsonDocument.Parse(await server.Client.GetStringAsync("/v1/models/org/llama-4-test"));
        Assert.Equal("org/llama-4-test", one.RootElement.GetProperty("id").GetString());
        var (status, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1]}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        AssertError(body, "invalid_request_error", "model", "model_not_found", "this server serves 'org/llama-4-test'");
    }

    [Fact]
    public async Task Completion_TokenIds_TextUsageFinishAndIds()
    {
        int[] output = Tokenizer.Encode("Hi there");
        var s = new FakeGenerationScheduler { Script = _ => output, FinishFor = (_, _) => FinishReason.Length };
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, body, response) = await PostAsync(server, "/v1/completions",
            $$"""{"model":"{{Model}}","prompt":[500,7,9],"max_tokens":{{output.Length}},"temperature":0,"seed":42,"top_k":3,"top_p":0.5,"return_token_ids":true}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("application/json", response.Content.Headers.ContentType!.MediaType);
        Assert.StartsWith("cmpl-", body.GetProperty("id").GetString());
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        Assert.Equal(Model, body.GetProperty("model").GetString());
        var choice = Assert.Single(body.GetProperty("choices").EnumerateArray());
        Assert.Equal(0, choice.GetProperty("index").GetInt32());
        Assert.Equal("Hi there", choice.GetProperty("text").GetString());
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(JsonValueKind.Null, choice.GetProperty("logprobs").ValueKind);
        Assert.Equal([500, 7, 9], choice.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(output, choice.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()));
        var usage = body.GetProperty("usage");
        Assert.Equal(3, usage.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(output.Length, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(3 + output.Length, usage.GetProperty("total_tokens").GetInt32());

        var request = Assert.Single(s.Requests);
        Assert.Equal([500, 7, 9], request.PromptIds);
        Assert.Equal(output.Length, request.MaxTokens);
        Assert.Equal(new SamplingParams(0f, 0.5f, 3, 42), request.Sampling);
        Assert.Equal(Tokenizer.EosTokenIds.Order(), request.StopTokenIds!.Order());
        Assert.Equal(body.GetProperty("id").GetString(), request.Id);
    }

    [Fact]
    public async Task Completion_TextPrompt_TokenizedWithOneBos_DefaultMaxTokensFromTheServerCap()
    {
        var s = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(s, o => o.DefaultMaxTokens = 16);
        var (status, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":"Hello world"}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("ABCDEFGHIJKLMNOP", body.GetProperty("choices")[0].GetProperty("text").GetString());
        var (status2, _, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":"<|begin_of_text|>Hello world"}""");
        Assert.Equal(HttpStatusCode.OK, status2);
        var requests = s.Requests.ToArray();
        int[] expected = [Tokenizer.BosTokenId, .. Tokenizer.Encode("Hello world")];
        Assert.Equal(expected, requests[0].PromptIds);
        Assert.Equal(expected, requests[1].PromptIds);
        Assert.Equal(16, requests[0].MaxTokens);
        Assert.Equal(new SamplingParams(1f, 1f, 0, null), requests[0].Sampling);
    }

    [Fact]
    public async Task Chat_RendersTheLlama4Template_StopsAtEndOfTurn()
    {
        int[] output = [.. Tokenizer.Encode("Fine."), Tokenizer.EndOfTurnTokenId];
        var s = new FakeGenerationScheduler { Script = _ => output };
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, body, _) = await PostAsync(server, "/v1/chat/completions",
            $$"""{"model":"{{Model}}","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"How are you?"}]}],"max_completion_tokens":20}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.StartsWith("chatcmpl-", body.GetProperty("id").GetString());
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        var choice = body.GetProperty("choices")[0];
        Assert.Equal("assistant", choice.GetProperty("message").GetProperty("role").GetString());
        Assert.Equal("Fine.", choice.GetProperty("message").GetProperty("content").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(output.Length, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        var request = Assert.Single(s.Requests);
        Assert.Equal(Tokenizer.EncodeChat([ChatMessage.System("Be brief."), ChatMessage.User("How are you?")]), request.PromptIds);
        Assert.Contains(Tokenizer.EndOfTurnTokenId, request.StopTokenIds!);
        Assert.Equal(20, request.MaxTokens);
    }

    [Fact]
    public async Task Chat_DefaultMaxTokens_IsTheRestOfTheContext()
    {
        var s = new FakeGenerationScheduler { MaxContextTokens = 100, Script = _ => [65] };
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, _, _) = await PostAsync(server, "/v1/chat/completions", $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"x"}]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var request = Assert.Single(s.Requests);
        Assert.Equal(100 - request.PromptIds.Length, request.MaxTokens);
    }

    [Fact]
    public async Task CompletionStream_ChunksThenFinishThenUsageThenDone()
    {
        int[] output = Tokenizer.Encode("abc def");
        var s = new FakeGenerationScheduler { Script = _ => output };
        await using var server = await ApiTestServer.StartAsync(s);
        var chunks = await StreamAsync(server, "/v1/completions",
            $$"""{"model":"{{Model}}","prompt":[500],"max_tokens":{{output.Length}},"stream":true,"stream_options":{"include_usage":true},"return_token_ids":true}""");
        var usageChunk = chunks[^1];
        Assert.Empty(usageChunk.GetProperty("choices").EnumerateArray());
        Assert.Equal(output.Length, usageChunk.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(1, usageChunk.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var content = chunks.SkipLast(1).ToList();
        Assert.Equal(output.Length, content.Count);
        Assert.All(content, c =>
        {
            Assert.Equal("text_completion", c.GetProperty("object").GetString());
            Assert.Equal(chunks[0].GetProperty("id").GetString(), c.GetProperty("id").GetString());
            Assert.Equal(JsonValueKind.Null, c.GetProperty("usage").ValueKind);
        });
        Assert.Equal("abc def", string.Concat(content.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal(output, content.SelectMany(c => c.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32())));
        Assert.All(content.SkipLast(1), c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
        Assert.Equal("length", content[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal([500], content[0].GetProperty("choices")[0].GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()));
    }

    [Fact]
    public async Task ChatStream_RoleFirst_EmptyDeltaWithFinishLast_NoUsageUnlessAsked()
    {
        int[] output = [.. Tokenizer.Encode("Yes"), Tokenizer.EndOfTurnTokenId];
        var s = new FakeGenerationScheduler { Script = _ => output };
        await using var server = await ApiTestServer.StartAsync(s);
        var chunks = await StreamAsync(server, "/v1/chat/completions",
            $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"?"}],"stream":true}""");
        Assert.All(chunks, c =>
        {
            Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString());
            Assert.False(c.TryGetProperty("usage", out _));
        });
        var first = chunks[0].GetProperty("choices")[0].GetProperty("delta");
        Assert.Equal("assistant", first.GetProperty("role").GetString());
        Assert.Equal("", first.GetProperty("content").GetString());
        var last = chunks[^1].GetProperty("choices")[0];
        Assert.Empty(last.GetProperty("delta").EnumerateObject());
        Assert.Equal("stop", last.GetProperty("finish_reason").GetString());
        Assert.Equal("Yes", string.Concat(chunks.Skip(1).SkipLast(1).Select(c => c.GetProperty("choices")[0].GetProperty("delta").GetProperty("content").GetString())));
    }

    [Fact]
    public async Task StopSequence_OverHttp_CutsTextFinishStop_StreamingAndNot()
    {
        int[] output = Tokenizer.Encode("first line\n\nsecond line");
        var s = new FakeGenerationScheduler { Script = _ => output };
        await using var server = await ApiTestServer.StartAsync(s);
        var (_, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1],"max_tokens":100,"stop":["\n\n","zz"]}""");
        Assert.Equal("first line", body.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.True(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32() < output.Length);

        var chunks = await StreamAsync(server, "/v1/chat/completions", $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"?"}],"stop":"\n\n","stream":true}""");
        Assert.Equal("first line", string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var t) ? t.GetString() : "")));
        Assert.Equal("stop", chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Theory]
    [InlineData(429, "rate_limit_error")]
    [InlineData(503, "service_unavailable_error")]
    public async Task QueueFull_MapsToConfiguredStatusWithRetryAfter(int status, string type)
    {
        var s = new FakeGenerationScheduler { Admission = _ => new QueueFullException("the request queue is full (1 waiting)", TimeSpan.FromSeconds(1.2)) };
        await using var server = await ApiTestServer.StartAsync(s, o => o.QueueFullStatusCode = status);
        foreach (bool stream in new[] { false, true })
        {
            var (code, body, response) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1],"stream":{{(stream ? "true" : "false")}}}""");
            Assert.Equal(status, (int)code);
            Assert.Equal("2", response.Headers.GetValues("Retry-After").Single());
            Assert.Equal("application/json", response.Content.Headers.ContentType!.MediaType);
            AssertError(body, type, null, "queue_full", "queue is full");
        }
    }

    [Fact]
    public async Task SchedulerRefusals_MapTo400()
    {
        var s = new FakeGenerationScheduler
        {
            Admission = r => r.MaxTokens == 7 ? new RequestTooLargeException("needs 900 KV blocks but the whole KV budget holds 10")
                : new ArgumentException("top_p must be in (0, 1]", "sampling"),
        };
        await using var server = await ApiTestServer.StartAsync(s);
        var (code, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1],"max_tokens":7}""");
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", "max_tokens", "context_length_exceeded", "whole KV budget");
        (code, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1],"max_tokens":8}""");
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", "sampling", null, "top_p must be in (0, 1]");
    }

    [Fact]
    public async Task PromptPlusMaxTokensOverContext_400BeforeTheScheduler()
    {
        var s = new FakeGenerationScheduler { MaxContextTokens = 64 };
        await using var server = await ApiTestServer.StartAsync(s);
        string ids = string.Join(",", Enumerable.Repeat(5, 60));
        var (code, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[{{ids}}],"max_tokens":5}""");
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", "max_tokens", "context_length_exceeded", "maximum context length is 64 tokens. However, you requested 65 tokens (60 in the prompt, 5 for the completion)");
        ids = string.Join(",", Enumerable.Repeat(5, 64));
        (code, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[{{ids}}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", "prompt", "context_length_exceeded", "the prompt is 64 tokens long");
        // The default (--default-max-tokens) shrinks to what is left of the context.
        ids = string.Join(",", Enumerable.Repeat(5, 60));
        (code, _, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[{{ids}}]}""");
        Assert.Equal(HttpStatusCode.OK, code);
        Assert.Equal(4, Assert.Single(s.Requests).MaxTokens);
    }

    [Theory]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":[1],"temperature":"0"}""", "temperature")]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":[600]}""", "prompt[0]")]
    [InlineData("/v1/completions", """{"model":"tiny-maverick","prompt":"x","n":300}""", "n")]
    [InlineData("/v1/completions", """{"model":"gpt-4","prompt":"x"}""", "model")]
    [InlineData("/v1/chat/completions", """{"model":"tiny-maverick","messages":[]}""", "messages")]
    [InlineData("/v1/chat/completions", """{"model":"tiny-maverick","messages":[{"role":"user","content":"x"}],"stop":[1,2]}""", "stop[0]")]
    public async Task InvalidRequests_400WithParam_SchedulerUntouched(string path, string json, string param)
    {
        var s = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(s);
        var (code, body, _) = await PostAsync(server, path, json);
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", param, body.GetProperty("error").GetProperty("code").GetString(), param);
        Assert.Empty(s.Requests);
    }

    [Theory]
    [InlineData("")]
    [InlineData("{")]
    [InlineData("""{"model":"m",}""")]
    [InlineData("""{"model":"m"} {}""")]
    [InlineData("not json")]
    public async Task MalformedJson_400InvalidJson(string json)
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler());
        var (code, body, _) = await PostAsync(server, "/v1/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, code);
        AssertError(body, "invalid_request_error", null, "invalid_json", "not valid JSON");
    }

    [Fact]
    public async Task OversizedBody_413_WithOrWithoutContentLength()
    {
        var s = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(s, o => o.MaxRequestBodyBytes = 2048);
        string big = $$"""{"model":"{{Model}}","prompt":"{{new string('x', 4000)}}"}""";
        var (code, body, _) = await PostAsync(server, "/v1/completions", big);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, code);
        AssertError(body, "invalid_request_error", null, "request_too_large", "larger than this server's limit");

        // Chunked upload: no Content-Length, the limit trips while reading.
        var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(big)));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = content };
        request.Headers.TransferEncodingChunked = true;
        using var response = await server.Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Empty(s.Requests);

        // Under the limit is fine.
        (code, _, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":"{{new string('x', 1000)}}"}""");
        Assert.Equal(HttpStatusCode.OK, code);
    }

    [Fact]
    public async Task UnknownRouteAndWrongMethod_OpenAiErrors()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler());
        var response = await server.Client.GetAsync("/v1/engines");
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        using (var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync()))
        {
            AssertError(doc.RootElement, "invalid_request_error", null, "not_found", "Unknown route: GET /v1/engines");
        }
        response = await server.Client.GetAsync("/v1/chat/completions");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, response.StatusCode);
        using (var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync()))
        {
            AssertError(doc.RootElement, "invalid_request_error", null, "method_not_allowed", "GET /v1/chat/completions");
        }
    }

    [Fact]
    public async Task SchedulerBug_500ServerError_NotTheExceptionText()
    {
        var s = new FakeGenerationScheduler { Admission = _ => new NullReferenceException("secret internals") };
        await using var server = await ApiTestServer.StartAsync(s);
        var (code, body, _) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1]}""");
        Assert.Equal(HttpStatusCode.InternalServerError, code);
        AssertError(body, "server_error", null, "internal_error", "was logged");
        Assert.DoesNotContain("secret", body.GetRawText());
    }

    [Fact]
    public async Task FailureMidStream_ErrorEventThenDone()
    {
        var s = new FakeGenerationScheduler { FailAfter = 3 };
        await using var server = await ApiTestServer.StartAsync(s);
        var chunks = await StreamAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":[1],"max_tokens":10,"stream":true}""");
        Assert.Equal(4, chunks.Count);
        Assert.Equal("ABC", string.Concat(chunks.Take(3).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        AssertError(chunks[^1], "server_error", null, "internal_error", "scripted failure");
    }

    [Fact]
    public async Task ClientDisconnectMidStream_CancelsTheSequence()
    {
        var s = new FakeGenerationScheduler { TokenDelay = TimeSpan.FromMilliseconds(20) };
        await using var server = await ApiTestServer.StartAsync(s);
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json($$"""{"model":"{{Model}}","prompt":[1],"max_tokens":4000,"stream":true}""") })
        {
            var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var stream = await response.Content.ReadAsStreamAsync();
            var buffer = new byte[64];
            Assert.True(await stream.ReadAsync(buffer) > 0);
            response.Dispose();
        }
        var id = Assert.Single(s.Requests).Id;
        Assert.True(await s.EndedTask(id).Task.WaitAsync(TimeSpan.FromSeconds(30)), "the sequence's cancellation token never fired");
    }

    [Fact]
    public async Task Http2Port_ServesHttp2WithPriorKnowledge()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler(), o => o.Http2Port = 0);
        Assert.NotNull(server.Http2Address);
        using var client = new HttpClient { BaseAddress = new Uri(server.Http2Address!) };
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = Json($$"""{"model":"{{Model}}","prompt":[1],"max_tokens":3}"""),
        };
        using var response = await client.SendAsync(request);
        Assert.Equal(HttpVersion.Version20, response.Version);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        Assert.Equal("ABC", doc.RootElement.GetProperty("choices")[0].GetProperty("text").GetString());
    }
}
