using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Serving.Hosting;

namespace Distributed.Coordinator.Tests.Serving.Api;

/// <summary>The OpenAI API behind its API key (<see cref="ServeOptions.ApiKey"/>), over real Kestrel on loopback.</summary>
[Trait("Category", "Unit")]
public sealed class ApiKeyTests
{
    private const string Key = "test-api-key-0123456789abcdef";

    [Fact]
    public async Task WithAKey_EveryApiRouteRefusesAMissingOrWrongKey_BeforeReadingTheBody()
    {
        var scheduler = new FakeGenerationScheduler();
        await using var server = await ApiTestServer.StartAsync(scheduler, o => o.ApiKey = Key);
        foreach (var (method, path) in new[] { ("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize") })
        {
            foreach (string? authorization in new[] { null, "Bearer wrong-key-0123456789abcdef", "Basic " + Key, "Bearer " + Key + "x", Key })
            {
                using var request = new HttpRequestMessage(new HttpMethod(method), path);
                if (method == "POST")
                {
                    // Not even valid JSON: a refusal must come before the body is parsed.
                    request.Content = new StringContent("{not json", Encoding.UTF8, "application/json");
                }
                if (authorization is not null)
                {
                    request.Headers.TryAddWithoutValidation("Authorization", authorization);
                }
                using var response = await server.Client.SendAsync(request);
                Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
                Assert.Equal("Bearer", response.Headers.WwwAuthenticate.Single().Scheme);
                using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
                var error = body.RootElement.GetProperty("error");
                Assert.Equal("invalid_api_key", error.GetProperty("code").GetString());
                Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
                Assert.DoesNotContain(Key, body.RootElement.GetRawText(), StringComparison.Ordinal);
            }
        }
        Assert.Empty(scheduler.Requests);
    }

    [Fact]
    public async Task WithTheKey_TheApiAnswers_AndProbesStayOpen()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler(), o => o.ApiKey = Key);
        using (var models = new HttpRequestMessage(HttpMethod.Get, "/v1/models"))
        {
            models.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Key);
            using var response = await server.Client.SendAsync(models);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
        // An unknown route outside the API is not the key's business: the router's 404.
        using var other = await server.Client.GetAsync("/nothing-here");
        Assert.Equal(HttpStatusCode.NotFound, other.StatusCode);
    }

    [Fact]
    public async Task WithoutAKey_OnLoopback_TheApiIsOpen()
    {
        await using var server = await ApiTestServer.StartAsync(new FakeGenerationScheduler(), o => o.ApiKeyEnvironmentVariable = "DISTRIBUTED_TEST_UNSET_API_KEY");
        using var response = await server.Client.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Theory]
    [InlineData("is not a loopback address: set an API key", "--host", "0.0.0.0")]
    [InlineData("--api-key-env: the environment variable DISTRIBUTED_TEST_UNSET_API_KEY is not set", "--api-key-env", "DISTRIBUTED_TEST_UNSET_API_KEY")]
    public async Task Serve_RefusesToStartAnOpenApiOffLoopback(string reason, params string[] args)
    {
        var stderr = new StringWriter();
        int rc = await Distributed.Coordinator.Cli.CommandLine.RunAsync(["serve", "--model", TestPaths.Fixture("tiny-maverick"), "--port", "0", .. args],
            new StringWriter(), stderr);
        Assert.Equal(2, rc);
        Assert.Contains(reason, stderr.ToString(), StringComparison.Ordinal);
    }
}
