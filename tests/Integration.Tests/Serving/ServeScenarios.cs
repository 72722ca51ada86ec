using System.Net;
using static Distributed.Integration.Tests.Serving.SseClient;

namespace Distributed.Integration.Tests.Serving;

/// <summary>Scenarios run against every server configuration (in-process experts, 2 local workers).</summary>
internal static class ServeScenarios
{
    public static string GreedyBody(GoldenPrompt p, bool stream, string extra = "") =>
        $$"""{"model":"{{ServeFixture.ModelId}}","prompt":[{{string.Join(",", p.InputIds)}}],"max_tokens":{{p.NewTokens.Length}},"temperature":0,"return_token_ids":true,"stream":{{(stream ? "true" : "false")}}{{extra}}}""";

    /// <summary>Every golden prompt, non-streaming: greedy tokens, text and usage equal the fixture's.</summary>
    public static async Task GoldenGreedyAsync(HttpClient client)
    {
        foreach (var p in ServeFixture.Golden)
        {
            var (status, body, _) = await PostAsync(client, "/v1/completions", GreedyBody(p, stream: false));
            Assert.Equal(HttpStatusCode.OK, status);
            var choice = body.GetProperty("choices")[0];
            Assert.Equal(p.NewTokens, Ints(choice.GetProperty("token_ids")));
            Assert.Equal(ServeFixture.Tokenizer.Decode(p.NewTokens, skipSpecialTokens: true), choice.GetProperty("text").GetString());
            Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
            Assert.Equal(p.InputIds.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
            Assert.Equal(p.NewTokens.Length, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        }
    }

    /// <summary>
    /// <c>infer --json</c> (the CLI, in this process) and <c>serve</c> give the same greedy tokens for the same prompt:
    /// golden prompts and random ones, with <c>infer</c>'s EOS stop and serve's implicit EOS stop ids.
    /// </summary>
    public static async Task InferAndServeAgreeAsync(HttpClient client, params string[] inferArgs)
    {
        var rng = new Random(14);
        var prompts = ServeFixture.Golden.Select(g => g.InputIds)
            .Concat(Enumerable.Range(0, 3).Select(i => new[] { 500 }.Concat(Enumerable.Range(0, 5 + 11 * i).Select(_ => rng.Next(490))).ToArray()));
        foreach (int[] prompt in prompts)
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int rc = await Coordinator.Cli.CommandLine.RunAsync(
                ["infer", "--model", TestPaths.Fixture(ServeFixture.ModelId), "--prompt-ids", string.Join(",", prompt), "--max-new-tokens", "20", "--json", .. inferArgs],
                stdout, stderr);
            Assert.True(rc == 0, stderr.ToString());
            using var infer = System.Text.Json.JsonDocument.Parse(stdout.ToString());
            int[] inferred = Ints(infer.RootElement.GetProperty("new_tokens"));
            var (status, body, _) = await PostAsync(client, "/v1/completions",
                $$"""{"model":"{{ServeFixture.ModelId}}","prompt":[{{string.Join(",", prompt)}}],"max_tokens":20,"temperature":0,"return_token_ids":true}""");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(inferred, Ints(body.GetProperty("choices")[0].GetProperty("token_ids")));
        }
    }

    /// <summary><paramref name="clients"/> concurrent clients, half streaming, each gets its golden tokens.</summary>
    public static async Task ConcurrentClientsAsync(HttpClient client, int clients)
    {
        var tasks = Enumerable.Range(0, clients).Select(async i =>
        {
            var p = ServeFixture.Golden[i % ServeFixture.Golden.Count];
            int[] tokens;
            if (i % 2 == 0)
            {
                var chunks = await StreamAsync(client, "/v1/completions", GreedyBody(p, stream: true));
                tokens = chunks.SelectMany(c => Ints(c.GetProperty("choices")[0].GetProperty("token_ids"))).ToArray();
            }
            else
            {
                var (status, body, _) = await PostAsync(client, "/v1/completions", GreedyBody(p, stream: false));
                Assert.Equal(HttpStatusCode.OK, status);
                tokens = Ints(body.GetProperty("choices")[0].GetProperty("token_ids"));
            }
            return (p, tokens);
        }).ToArray();
        foreach (var (p, tokens) in await Task.WhenAll(tasks))
        {
            Assert.Equal(p.NewTokens, tokens);
        }
    }

    /// <summary>A streaming client disconnects after 3 events while another request runs; both that one and a follow-up are correct.</summary>
    public static async Task DisconnectMidStreamAsync(HttpClient client, ServeProcess server)
    {
        var p = ServeFixture.Golden[3];
        var other = PostAsync(client, "/v1/completions", GreedyBody(ServeFixture.Golden[1], stream: false));
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = Json($$"""{"model":"{{ServeFixture.ModelId}}","prompt":[{{string.Join(",", p.InputIds)}}],"max_tokens":3000,"temperature":0,"stream":true}"""),
        })
        {
            using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var events = ReadEventsAsync(await response.Content.ReadAsStreamAsync()).GetAsyncEnumerator();
            for (int i = 0; i < 3; i++)
            {
                Assert.True(await events.MoveNextAsync());
            }
            // Leaving the using block closes the connection mid-stream.
        }
        var (status, body, _) = await other;
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(ServeFixture.Golden[1].NewTokens, Ints(body.GetProperty("choices")[0].GetProperty("token_ids")));
        var (status2, body2, _) = await PostAsync(client, "/v1/completions", GreedyBody(p, stream: false));
        Assert.Equal(HttpStatusCode.OK, status2);
        Assert.Equal(p.NewTokens, Ints(body2.GetProperty("choices")[0].GetProperty("token_ids")));
        Assert.False(server.HasExited);
    }
}
