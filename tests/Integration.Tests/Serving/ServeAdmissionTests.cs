using System.Net;
using Xunit.Abstractions;
using static Distributed.Integration.Tests.Serving.SseClient;

namespace Distributed.Integration.Tests.Serving;

/// <summary>Backpressure through the real process: <c>--max-running 1 --max-queue 1</c>.</summary>
[Trait("Category", "Integration")]
public sealed class ServeAdmissionTests : IClassFixture<TinyQueueServeFixture>
{
    private readonly TinyQueueServeFixture _fixture;

    public ServeAdmissionTests(TinyQueueServeFixture fixture, ITestOutputHelper output)
    {
        _fixture = fixture;
        fixture.Server.Output = output;
    }

    [Fact]
    public async Task BurstBeyondQueue_429WithRetryAfter_AdmittedRequestsCorrect()
    {
        var client = _fixture.Client;
        // A 4000-token prompt keeps the single running slot busy with prefill for a few hundred milliseconds, far
        // longer than it takes the burst to arrive, so all but the running and the one queued request are refused.
        var rng = new Random(11);
        string prompt = string.Join(",", Enumerable.Range(0, 4000).Select(_ => rng.Next(496)).Prepend(500));
        string body = $$"""{"model":"{{ServeFixture.ModelId}}","prompt":[{{prompt}}],"max_tokens":16,"temperature":0,"return_token_ids":true}""";
        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => PostAsync(client, "/v1/completions", body)));

        var ok = results.Where(r => r.Status == HttpStatusCode.OK).ToList();
        var refused = results.Where(r => r.Status == HttpStatusCode.TooManyRequests).ToList();
        Assert.Equal(results.Length, ok.Count + refused.Count);
        Assert.NotEmpty(ok);
        Assert.NotEmpty(refused);
        foreach (var (_, error, response) in refused)
        {
            Assert.True(int.Parse(response.Headers.GetValues("Retry-After").Single()) >= 1);
            Assert.Equal("queue_full", error.GetProperty("error").GetProperty("code").GetString());
            Assert.Equal("rate_limit_error", error.GetProperty("error").GetProperty("type").GetString());
        }
        // Admitted requests were not disturbed by the refusals: same prompt, same greedy tokens.
        var first = Ints(ok[0].Body.GetProperty("choices")[0].GetProperty("token_ids"));
        Assert.All(ok, r => Assert.Equal(first, Ints(r.Body.GetProperty("choices")[0].GetProperty("token_ids"))));

        // Once the burst is over the server admits again.
        var (status, _, _) = await PostAsync(client, "/v1/completions", $$"""{"model":"{{ServeFixture.ModelId}}","prompt":[500],"max_tokens":4,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
    }
}
