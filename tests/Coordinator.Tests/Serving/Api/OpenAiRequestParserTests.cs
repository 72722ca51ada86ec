using System.Text.Json;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Api;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Api;

[Trait("Category", "Unit")]
public sealed class OpenAiRequestParserTests
{
    private static CompletionRequestBody Completion(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return OpenAiRequestParser.ParseCompletion(doc.RootElement, 512);
    }

    private static ChatCompletionRequestBody Chat(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return OpenAiRequestParser.ParseChat(doc.RootElement);
    }

    [Theory]
    [InlineData("""[1]""", null, "must be a JSON object")]
    [InlineData("""{"prompt":"x"}""", "model", "'model' is required")]
    [InlineData("""{"model":5,"prompt":"x"}""", "model", "'model' must be a string, got a number")]
    [InlineData("""{"model":"","prompt":"x"}""", "model", "must not be empty")]
    [InlineData("""{"model":"m"}""", "prompt", "'prompt' is required")]
    [InlineData("""{"model":"m","prompt":null}""", "prompt", "'prompt' is required")]
    [InlineData("""{"model":"m","prompt":""}""", "prompt", "'prompt' must not be empty")]
    [InlineData("""{"model":"m","prompt":[]}""", "prompt", "'prompt' must not be empty")]
    [InlineData("""{"model":"m","prompt":true}""", "prompt", "must be a string or an array of token ids, got a boolean")]
    [InlineData("""{"model":"m","prompt":[1,"a"]}""", "prompt[1]", "must be a token id in [0, 512), got a string")]
    [InlineData("""{"model":"m","prompt":[1,512]}""", "prompt[1]", "must be a token id in [0, 512), got 512")]
    [InlineData("""{"model":"m","prompt":[-1]}""", "prompt[0]", "got -1")]
    [InlineData("""{"model":"m","prompt":[1.5]}""", "prompt[0]", "got 1.5")]
    [InlineData("""{"model":"m","prompt":["a","b"]}""", "prompt", "holds 2 prompts")]
    [InlineData("""{"model":"m","prompt":[[]]}""", "prompt[0]", "must not be empty")]
    [InlineData("""{"model":"m","prompt":[{}]}""", "prompt[0]", "got an object")]
    [InlineData("""{"model":"m","prompt":"x","temperature":"hot"}""", "temperature", "'temperature' must be a number between 0 and 2, got a string")]
    [InlineData("""{"model":"m","prompt":"x","temperature":2.5}""", "temperature", "between 0 and 2, got 2.5")]
    [InlineData("""{"model":"m","prompt":"x","temperature":-0.1}""", "temperature", "got -0.1")]
    [InlineData("""{"model":"m","prompt":"x","temperature":true}""", "temperature", "got a boolean")]
    [InlineData("""{"model":"m","prompt":"x","top_p":0}""", "top_p", "greater than 0 and at most 1, got 0")]
    [InlineData("""{"model":"m","prompt":"x","top_p":1.01}""", "top_p", "got 1.01")]
    [InlineData("""{"model":"m","prompt":"x","top_k":-2}""", "top_k", "'top_k' must be an integer between -1 and")]
    [InlineData("""{"model":"m","prompt":"x","top_k":2.5}""", "top_k", "got 2.5")]
    [InlineData("""{"model":"m","prompt":"x","max_tokens":0}""", "max_tokens", "'max_tokens' must be an integer between 1 and")]
    [InlineData("""{"model":"m","prompt":"x","max_tokens":"16"}""", "max_tokens", "got a string")]
    [InlineData("""{"model":"m","prompt":"x","max_tokens":1e3}""", "max_tokens", "got 1e3")]
    [InlineData("""{"model":"m","prompt":"x","max_tokens":99999999999}""", "max_tokens", "got 99999999999")]
    [InlineData("""{"model":"m","prompt":"x","seed":"1"}""", "seed", "'seed' must be an integer")]
    [InlineData("""{"model":"m","prompt":"x","seed":1.5}""", "seed", "got 1.5")]
    [InlineData("""{"model":"m","prompt":"x","n":129}""", "n", "between 1 and 128")]
    [InlineData("""{"model":"m","prompt":"x","n":"1"}""", "n", "must be an integer")]
    [InlineData("""{"model":"m","prompt":"x","stream":"yes"}""", "stream", "'stream' must be a boolean, got a string")]
    [InlineData("""{"model":"m","prompt":"x","stream_options":{"include_usage":true}}""", "stream_options", "only allowed when 'stream' is true")]
    [InlineData("""{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":1}}""", "stream_options.include_usage", "must be a boolean")]
    [InlineData("""{"model":"m","prompt":"x","stream":true,"stream_options":{"bogus":true}}""", "stream_options.bogus", "Unrecognized request argument")]
    [InlineData("""{"model":"m","prompt":"x","stream":true,"stream_options":[]}""", "stream_options", "must be an object")]
    [InlineData("""{"model":"m","prompt":"x","stop":5}""", "stop", "'stop' must be a string or an array of up to 4 strings")]
    [InlineData("""{"model":"m","prompt":"x","stop":[1]}""", "stop[0]", "'stop[0]' must be a string")]
    [InlineData("""{"model":"m","prompt":"x","stop":["a","b","c","d","e"]}""", "stop", "at most 4 sequences, got 5")]
    [InlineData("""{"model":"m","prompt":"x","stop":""}""", "stop", "must not be an empty string")]
    [InlineData("""{"model":"m","prompt":"x","stop":["a",""]}""", "stop[1]", "must not be an empty string")]
    [InlineData("""{"model":"m","prompt":"x","frobnicate":1}""", "frobnicate", "Unrecognized request argument supplied: 'frobnicate'")]
    [InlineData("""{"model":"m","model":"m","prompt":"x"}""", "model", "Duplicate field 'model'")]
    [InlineData("""{"model":"m","prompt":"x","logprobs":21}""", "logprobs", "between 0 and 20")]
    [InlineData("""{"model":"m","prompt":"x","echo":true}""", "echo", "'echo' is not supported")]
    [InlineData("""{"model":"m","prompt":"x","best_of":2}""", "best_of", "'best_of' is not supported")]
    [InlineData("""{"model":"m","prompt":"x","suffix":"s"}""", "suffix", "'suffix' is not supported")]
    [InlineData("""{"model":"m","prompt":"x","presence_penalty":2.5}""", "presence_penalty", "between -2 and 2")]
    [InlineData("""{"model":"m","prompt":"x","repetition_penalty":0}""", "repetition_penalty", "greater than 0")]
    [InlineData("""{"model":"m","prompt":"x","min_tokens":-1}""", "min_tokens", "between 0")]
    [InlineData("""{"model":"m","prompt":"x","min_tokens":5,"max_tokens":4}""", "min_tokens", "must not exceed max_tokens")]
    [InlineData("""{"model":"m","prompt":"x","ignore_eos":1}""", "ignore_eos", "must be a boolean")]
    [InlineData("""{"model":"m","prompt":"x","stop_token_ids":[1,999]}""", "stop_token_ids[1]", "token id in [0, 512)")]
    [InlineData("""{"model":"m","prompt":"x","stop_token_ids":5}""", "stop_token_ids", "must be an array")]
    [InlineData("""{"model":"m","prompt":"x","response_format":{"type":"json_object"}}""", "response_format", "not supported")]
    [InlineData("""{"model":"m","prompt":"x","best_of":2}""", "best_of", "is not supported")]
    [InlineData("""{"model":"m","prompt":"x","frequency_penalty":"0"}""", "frequency_penalty", "must be a number")]
    [InlineData("""{"model":"m","prompt":"x","logit_bias":{"600":1}}""", "logit_bias.600", "token id in [0, 512)")]
    [InlineData("""{"model":"m","prompt":"x","logit_bias":{"x":1}}""", "logit_bias.x", "token id")]
    [InlineData("""{"model":"m","prompt":"x","logit_bias":{"5":101}}""", "logit_bias.5", "between -100 and 100")]
    [InlineData("""{"model":"m","prompt":"x","logit_bias":[1]}""", "logit_bias", "must be an object")]
    [InlineData("""{"model":"m","prompt":"x","user":5}""", "user", "'user' must be a string")]
    [InlineData("""{"model":"m","prompt":"x","return_token_ids":"yes"}""", "return_token_ids", "must be a boolean")]
    [InlineData("""{"model":"m","prompt":"x","max_completion_tokens":5}""", "max_completion_tokens", "Unrecognized request argument")]
    public void Completion_InvalidField_400NamingTheField(string json, string? param, string message)
    {
        var ex = Assert.Throws<ApiErrorException>(() => Completion(json));
        Assert.Equal(400, ex.StatusCode);
        Assert.Equal("invalid_request_error", ex.Type);
        Assert.Equal(param, ex.Param);
        Assert.Contains(message, ex.Message);
    }

    [Theory]
    [InlineData("""{"model":"m"}""", "messages", "'messages' is required")]
    [InlineData("""{"model":"m","messages":[]}""", "messages", "at least one message")]
    [InlineData("""{"model":"m","messages":"hi"}""", "messages", "must be an array")]
    [InlineData("""{"model":"m","messages":[5]}""", "messages[0]", "must be an object")]
    [InlineData("""{"model":"m","messages":[{"role":"robot","content":"x"}]}""", "messages[0].role", "'robot' is not supported")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x","tool_calls":[]}]}""", "messages[0].tool_calls", "only allowed on assistant")]
    [InlineData("""{"model":"m","messages":[{"content":"x"}]}""", "messages[0].role", "is required")]
    [InlineData("""{"model":"m","messages":[{"role":"user"}]}""", "messages[0].content", "is required")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":5}]}""", "messages[0].content", "must be a string or an array of content parts")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}""", "messages[0].content[0].type", "only 'text' and 'image_url' parts")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}""", "messages[0].content[0].image_url.url", "is required")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA","detail":"max"}}]}]}""", "messages[0].content[0].image_url.detail", "'auto', 'low' or 'high'")]
    [InlineData("""{"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}""", "messages[0].content[0].type", "only allowed in user messages")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}""", "messages[0].content[0].text", "is required")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"},{"role":"user","content":"y","extra":1}]}""", "messages[1].extra", "not a recognized message field")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x","content":"y"}]}""", "messages[0].content", "appears twice")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":6}""", "max_completion_tokens", "disagree")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}""", "max_completion_tokens", "between 1 and")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}""", "tools[0].function", "is required")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"code"}]}""", "tools[0].type", "must be 'function'")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a b"}}]}""", "tools[0].function.name", "letters, digits")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":3}}]}""", "tools[0].function.parameters", "JSON Schema object")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"required"}""", "tool_choice", "not supported")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{}}}""", "response_format", "not supported")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2}""", "top_logprobs", "needs 'logprobs'")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}""", "n", "between 1 and 128")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}""", "response_format", "is not supported")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":"yes"}""", "logprobs", "must be a boolean")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":null,"top_p":-1}""", "top_p", "got -1")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":"x"}],"prompt":"x"}""", "prompt", "Unrecognized request argument")]
    public void Chat_InvalidField_400NamingTheField(string json, string param, string message)
    {
        var ex = Assert.Throws<ApiErrorException>(() => Chat(json));
        Assert.Equal(400, ex.StatusCode);
        Assert.Equal(param, ex.Param);
        Assert.Contains(message, ex.Message);
    }

    [Fact]
    public void Completion_AllFields_Parsed()
    {
        var r = Completion("""
            {"model":"m","prompt":[1,2,3],"max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":40,"seed":-1,"n":1,
             "stop":["\n\n","END"],"stream":true,"stream_options":{"include_usage":true},"return_token_ids":true,"user":"u",
             "echo":false,"logprobs":null,"best_of":1,"suffix":null,"presence_penalty":0,"frequency_penalty":0.0,"logit_bias":{}}
            """);
        Assert.Equal("m", r.Model);
        Assert.Null(r.PromptText);
        Assert.Equal([1, 2, 3], r.PromptTokenIds!);
        var o = r.Options;
        Assert.Equal(7, o.MaxTokens);
        Assert.Equal(new SamplingParams(0.5f, 0.9f, 40, ulong.MaxValue), o.Sampling);
        Assert.Equal(["\n\n", "END"], o.Stop);
        Assert.True(o.Stream);
        Assert.True(o.IncludeUsage);
        Assert.True(o.ReturnTokenIds);
    }

    [Fact]
    public void Completion_Defaults_OpenAiDefaults()
    {
        var r = Completion("""{"model":"m","prompt":"hello","temperature":null}""");
        Assert.Equal("hello", r.PromptText);
        Assert.Null(r.PromptTokenIds);
        Assert.Equal(new GenerationOptions(null, new SamplingParams(1f, 1f, 0, null), [], false, false, false), r.Options with { Stop = [] });
        Assert.Empty(r.Options.Stop);
    }

    [Theory]
    [InlineData("""["only one"]""", "only one", null)]
    [InlineData("""[[5,6]]""", null, new[] { 5, 6 })]
    [InlineData("""[0, 511]""", null, new[] { 0, 511 })]
    public void Completion_PromptForms_Accepted(string prompt, string? text, int[]? ids)
    {
        var r = Completion($$"""{"model":"m","prompt":{{prompt}}}""");
        Assert.Equal(text, r.PromptText);
        Assert.Equal(ids, r.PromptTokenIds);
    }

    [Fact]
    public void Completion_TopKMinusOne_MeansOff()
    {
        Assert.Equal(0, Completion("""{"model":"m","prompt":"x","top_k":-1}""").Options.Sampling.TopK);
        Assert.Equal("x", Completion("""{"model":"m","prompt":"x","stop":"x"}""").Options.Stop.Single());
    }

    [Fact]
    public void Chat_MessagesAndAliases_Parsed()
    {
        var r = Chat("""
            {"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","name":"ann","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
             {"role":"assistant","content":"c","tool_calls":[]}],"max_completion_tokens":9,"max_tokens":9,"tools":null,"response_format":{"type":"text"},"logprobs":false}
            """);
        Assert.Equal(
            [ChatMessage.System("be brief"), ChatMessage.User("ab"), ChatMessage.Assistant("c")],
            r.Messages);
        Assert.Equal(9, r.Options.MaxTokens);
        Assert.Equal(4, Chat("""{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":4}""").Options.MaxTokens);
        Assert.Null(Chat("""{"model":"m","messages":[{"role":"user","content":"x"}]}""").Options.MaxTokens);
    }
}
