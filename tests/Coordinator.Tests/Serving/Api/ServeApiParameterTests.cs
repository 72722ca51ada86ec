using System.Net;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Api;

/// <summary>
/// The OpenAI parameters of issue #14 over the real serve host with a scripted scheduler: what reaches the scheduler,
/// n choices, logprobs in both APIs' formats, tool calls (stream and not), /tokenize and /detokenize.
/// </summary>
[Trait("Category", "Unit")]
public sealed class ServeApiParameterTests
{
    private const string Model = "tiny-maverick";

    private static Llama4Tokenizer Tokenizer => ApiTestServer.Tokenizer;

    private static async Task<(HttpStatusCode Status, JsonElement Body)> PostAsync(ApiTestServer server, string path, string json)
    {
        var response = await server.Client.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        return (response.StatusCode, doc.RootElement.Clone());
    }

    private static async Task<List<JsonElement>> StreamAsync(ApiTestServer server, string path, string json)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var events = new List<JsonElement>();
        await foreach (var e in SseTestReader.ReadEventsAsync(await response.Content.ReadAsStreamAsync()))
        {
            if (e != "[DONE]")
            {
                using var doc = JsonDocument.Parse(e);
                events.Add(doc.RootElement.Clone());
            }
        }
        return events;
    }

    [Fact]
    public async Task SamplingParameters_ReachTheSchedulerAsGiven()
    {
        var s = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, _) = await PostAsync(server, "/v1/completions", $$"""
            {"model":"{{Model}}","prompt":[1,2],"max_tokens":5,"presence_penalty":0.5,"frequency_penalty":-1,"repetition_penalty":1.3,
             "logit_bias":{"7":-100,"9":2.5},"min_tokens":2,"ignore_eos":true,"stop_token_ids":[11,12],"seed":-3,"temperature":0.5,"top_k":-1}
            """);
        Assert.Equal(HttpStatusCode.OK, status);
        var r = Assert.Single(s.Requests);
        Assert.Equal((0.5f, -1f, 1.3f, 2), (r.Sampling.PresencePenalty, r.Sampling.FrequencyPenalty, r.Sampling.RepetitionPenalty, r.Sampling.MinTokens));
        Assert.Equal(new Dictionary<int, float> { [7] = -100f, [9] = 2.5f }, r.Sampling.LogitBias);
        Assert.True(r.IgnoreEos);
        Assert.Equal([11, 12], r.StopTokenIds!.Order()); // ignore_eos: the EOS ids are not stop ids
        Assert.Equal(unchecked((ulong)-3L), r.Sampling.Seed);
        Assert.Null(r.Logprobs);

        (status, _) = await PostAsync(server, "/v1/chat/completions", $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"x"}],"stop_token_ids":[11]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var chat = s.Requests.Last();
        Assert.Contains(11, chat.StopTokenIds!);
        Assert.Contains(Tokenizer.EndOfTurnTokenId, chat.StopTokenIds!);
        Assert.Equal(ApiTestServer.Tokenizer.EosTokenIds.Order(), chat.StopTokenIds!.Where(Tokenizer.IsEos).Order());
        Assert.Equal(4096 - chat.PromptIds.Length, chat.MaxTokens); // default: the rest of the context, under the 4096 cap
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task NChoices_EachChoiceIndexed_UsageCountsAllOfThem(bool stream)
    {
        var s = new FakeGenerationScheduler { Script = _ => [.. Tokenizer.Encode("Hi there")] };
        await using var server = await ApiTestServer.StartAsync(s);
        string json = $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"x"}],"n":3,"max_tokens":8,"stream":{{(stream ? "true" : "false")}},"stream_options":{{(stream ? """{"include_usage":true}""" : "null")}}}""";
        int length = Tokenizer.Encode("Hi there").Length;
        if (!stream)
        {
            var (status, body) = await PostAsync(server, "/v1/chat/completions", json);
            Assert.Equal(HttpStatusCode.OK, status);
            var choices = body.GetProperty("choices").EnumerateArray().ToArray();
            Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
            Assert.All(choices, c => Assert.Equal("Hi there", c.GetProperty("message").GetProperty("content").GetString()));
            Assert.Equal(3 * length, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            return;
        }
        var chunks = await StreamAsync(server, "/v1/chat/completions", json);
        var text = new StringBuilder[3].Select(_ => new StringBuilder()).ToArray();
        var finishes = new string?[3];
        foreach (var chunk in chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0))
        {
            var c = chunk.GetProperty("choices")[0];
            int i = c.GetProperty("index").GetInt32();
            if (c.GetProperty("delta").TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
            {
                text[i].Append(content.GetString());
            }
            if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String)
            {
                finishes[i] = c.GetProperty("finish_reason").GetString();
            }
        }
        Assert.All(text, t => Assert.Equal("Hi there", t.ToString()));
        Assert.All(finishes, f => Assert.Equal("stop", f));
        Assert.Equal(3 * length, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task Logprobs_ChatAndCompletionFormats()
    {
        var s = new FakeGenerationScheduler { Script = _ => [.. Tokenizer.Encode("ab")] };
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, chat) = await PostAsync(server, "/v1/chat/completions", $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":2,"max_tokens":4}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(2, s.Requests.Last().Logprobs);
        var content = chat.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content").EnumerateArray().ToArray();
        Assert.Equal(Tokenizer.Encode("ab").Length, content.Length);
        Assert.Equal(-0.5f, content[0].GetProperty("logprob").GetSingle());
        Assert.Equal(2, content[0].GetProperty("top_logprobs").GetArrayLength());
        Assert.Equal(Tokenizer.GetTokenBytes(0).ToArray().Select(b => (int)b), content[0].GetProperty("top_logprobs")[0].GetProperty("bytes").EnumerateArray().Select(e => e.GetInt32()));

        var (_, completion) = await PostAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":"x","logprobs":3,"max_tokens":4}""");
        var lp = completion.GetProperty("choices")[0].GetProperty("logprobs");
        Assert.Equal(["tokens", "token_logprobs", "top_logprobs", "text_offset"], lp.EnumerateObject().Select(p => p.Name));
        Assert.Equal(Tokenizer.Encode("ab").Length, lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.Equal(0, lp.GetProperty("text_offset")[0].GetInt32());

        var chunks = await StreamAsync(server, "/v1/completions", $$"""{"model":"{{Model}}","prompt":"x","logprobs":1,"max_tokens":4,"stream":true}""");
        Assert.All(chunks, c => Assert.Equal(1, c.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("tokens").GetArrayLength()));
    }

    private const string Tools = """
        [{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]
        """;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ToolCalls_InTheLlama4Format_AreParsedIntoToolCalls(bool stream)
    {
        int[] call = [Tokenizer.GetSpecialTokenId("<|python_start|>"), .. Tokenizer.Encode("""{"name": "get_weather", "parameters": {"city": "Paris"}}"""),
            Tokenizer.GetSpecialTokenId("<|python_end|>"), Tokenizer.EndOfTurnTokenId];
        var s = new FakeGenerationScheduler { Script = _ => call, FinishFor = (_, _) => FinishReason.Stop };
        await using var server = await ApiTestServer.StartAsync(s);
        string json = $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"Weather in Paris?"}],"tools":{{Tools}},"stream":{{(stream ? "true" : "false")}}}""";
        string name, arguments, finish;
        if (!stream)
        {
            var (status, body) = await PostAsync(server, "/v1/chat/completions", json);
            Assert.Equal(HttpStatusCode.OK, status);
            var choice = body.GetProperty("choices")[0];
            Assert.Equal(JsonValueKind.Null, choice.GetProperty("message").GetProperty("content").ValueKind);
            var tc = Assert.Single(choice.GetProperty("message").GetProperty("tool_calls").EnumerateArray());
            Assert.StartsWith("chatcmpl-tool-", tc.GetProperty("id").GetString());
            Assert.Equal("function", tc.GetProperty("type").GetString());
            (name, arguments, finish) = (tc.GetProperty("function").GetProperty("name").GetString()!, tc.GetProperty("function").GetProperty("arguments").GetString()!,
                choice.GetProperty("finish_reason").GetString()!);
        }
        else
        {
            var chunks = await StreamAsync(server, "/v1/chat/completions", json);
            var deltas = chunks.Select(c => c.GetProperty("choices")[0]).ToArray();
            Assert.DoesNotContain(deltas, d => d.GetProperty("delta").TryGetProperty("content", out var c) && c.GetString()!.Length > 0);
            var tc = Assert.Single(deltas, d => d.GetProperty("delta").TryGetProperty("tool_calls", out _)).GetProperty("delta").GetProperty("tool_calls")[0];
            Assert.Equal(0, tc.GetProperty("index").GetInt32());
            (name, arguments, finish) = (tc.GetProperty("function").GetProperty("name").GetString()!, tc.GetProperty("function").GetProperty("arguments").GetString()!,
                deltas[^1].GetProperty("finish_reason").GetString()!);
        }
        Assert.Equal("get_weather", name);
        Assert.Equal("Paris", JsonDocument.Parse(arguments).RootElement.GetProperty("city").GetString());
        Assert.Equal("tool_calls", finish);

        // The tools are in the prompt, rendered by the template.
        var rendered = Tokenizer.Decode(s.Requests.Last().PromptIds);
        Assert.Contains("Given the following functions", rendered);
        Assert.Contains("\"name\": \"get_weather\"", rendered);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task WithTools_PlainAnswers_StayContent(bool stream)
    {
        var s = new FakeGenerationScheduler { Script = _ => [.. Tokenizer.Encode("It is sunny."), Tokenizer.EndOfTurnTokenId], FinishFor = (_, _) => FinishReason.Stop };
        await using var server = await ApiTestServer.StartAsync(s);
        string json = $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"Weather?"}],"tools":{{Tools}},"stream":{{(stream ? "true" : "false")}}}""";
        if (!stream)
        {
            var (_, body) = await PostAsync(server, "/v1/chat/completions", json);
            Assert.Equal("It is sunny.", body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
            Assert.Equal("stop", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
            return;
        }
        var chunks = await StreamAsync(server, "/v1/chat/completions", json);
        string text = string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("delta")).Where(d => d.TryGetProperty("content", out _)).Select(d => d.GetProperty("content").GetString()));
        Assert.Equal("It is sunny.", text);
        Assert.Equal("stop", chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task ToolRoleMessagesAndAssistantToolCalls_AreRenderedByTheTemplate()
    {
        var s = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(s);
        var (status, _) = await PostAsync(server, "/v1/chat/completions", $$$"""
            {"model":"{{{Model}}}","max_tokens":2,"tools":{{{Tools}}},"messages":[
              {"role":"user","content":"Weather in Paris?"},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"18 C"}]}
            """);
        Assert.Equal(HttpStatusCode.OK, status);
        string rendered = Tokenizer.Decode(s.Requests.Last().PromptIds);
        Assert.Contains("<|header_start|>assistant<|header_end|>\n\n<|python_start|><|python_end|>{\"name\": \"get_weather\", \"parameters\": \"{\\\"city\\\": \\\"Paris\\\"}\"}<|eot|>", rendered);
        Assert.Contains("<|header_start|>ipython<|header_end|>\n\n\"18 C\"<|eot|>", rendered);
        Assert.EndsWith("<|header_start|>assistant<|header_end|>\n\n", rendered);
    }

    [Fact]
    public async Task TokenizeAndDetokenize_AsVllmExposesThem()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler());
        var (status, t) = await PostAsync(server, "/tokenize", $$"""{"model":"{{Model}}","prompt":"Hello world","return_token_strs":true}""");
        Assert.Equal(HttpStatusCode.OK, status);
        int[] expected = [Tokenizer.BosTokenId, .. Tokenizer.Encode("Hello world")];
        Assert.Equal(expected, t.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(expected.Length, t.GetProperty("count").GetInt32());
        Assert.Equal(4096, t.GetProperty("max_model_len").GetInt32());
        Assert.Equal("<|begin_of_text|>", t.GetProperty("token_strs")[0].GetString());

        (_, t) = await PostAsync(server, "/tokenize", """{"prompt":"Hello world","add_special_tokens":false}""");
        Assert.Equal(Tokenizer.Encode("Hello world"), t.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(JsonValueKind.Null, t.GetProperty("token_strs").ValueKind);

        (_, t) = await PostAsync(server, "/tokenize", """{"messages":[{"role":"user","content":"Hi"}]}""");
        Assert.Equal(Tokenizer.EncodeChat([ChatMessage.User("Hi")]), t.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));

        string tokens = string.Join(",", expected);
        (status, var d) = await PostAsync(server, "/detokenize", $$$"""{"model":"{{{Model}}}","tokens":[{{{tokens}}}]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("<|begin_of_text|>Hello world", d.GetProperty("prompt").GetString());

        foreach (var (path, json, param) in new[]
        {
            ("/detokenize", """{"tokens":[1,9999]}""", "tokens[1]"),
            ("/detokenize", """{"tokens":"x"}""", "tokens"),
            ("/tokenize", """{"prompt":5}""", "prompt"),
            ("/tokenize", """{"prompt":"a","model":"other"}""", "model"),
            ("/tokenize", """{"prompt":"a","extra":1}""", "extra"),
            ("/tokenize", """{"messages":[{"role":"robot","content":"x"}]}""", "messages[0].role"),
        })
        {
            var (code, error) = await PostAsync(server, path, json);
            Assert.Equal(HttpStatusCode.BadRequest, code);
            Assert.Equal(param, error.GetProperty("error").GetProperty("param").GetString());
        }
    }
}
