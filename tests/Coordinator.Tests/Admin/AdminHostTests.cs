using System.Net;
using Distributed.Coordinator.Admin;
using Microsoft.Extensions.Logging;

namespace Distributed.Coordinator.Tests.Admin;

/// <summary>The admin listener over real Kestrel without a cluster: auth runs before anything is resolved or changed.</summary>
public sealed class AdminHostTests
{
    private const string Token = "host-test-token-0123456789";

    [Fact]
    [Trait("Category", "Unit")]
    public async Task Unauthorized_Is401_BeforeTheAdminIsEverCreated_OpenApiIsServed()
    {
        int created = 0;
        var app = ClusterAdminHosting.BuildHost(new ClusterAdminOptions { Token = Token, Host = "127.0.0.1" }, _ =>
        {
            Interlocked.Increment(ref created);
            throw new InvalidOperationException("no cluster in this test");
        }, l => l.SetMinimumLevel(LogLevel.Critical));
        await app.StartAsync();
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri(ClusterAdminHosting.BoundAddress(app)) };
            foreach (var (method, path) in new[] { ("GET", "/admin/v1/cluster"), ("GET", "/admin/v1/placement"), ("GET", "/admin/v1/experts/load"),
                ("GET", "/admin/v1/operations/op-1"), ("POST", "/admin/v1/workers/w/drain"), ("POST", "/admin/v1/experts/replicas"), ("POST", "/admin/v1/rebalance") })
            {
                using var request = new HttpRequestMessage(new HttpMethod(method), path);
                request.Headers.TryAddWithoutValidation("Authorization", "Bearer wrong-token-0123456789");
                var response = await http.SendAsync(request);
                Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
                Assert.Contains("\"unauthorized\"", await response.Content.ReadAsStringAsync());
            }
            Assert.Equal(0, created);
            var doc = await http.GetAsync("/admin/v1/openapi.json");
            Assert.Equal(HttpStatusCode.OK, doc.StatusCode);
            Assert.Contains("/admin/v1/rebalance", await doc.Content.ReadAsStringAsync());
            Assert.Null(ClusterAdminHosting.BoundGrpcAddress(app));
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void NoToken_RefusesToBuild_NamingTheVariable()
    {
        var ex = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => ClusterAdminHosting.BuildHost(
            new ClusterAdminOptions { TokenEnvironmentVariable = "DISTRIBUTED_ADMIN_TOKEN_UNSET_IN_TESTS", Host = "127.0.0.1" }, _ => null!));
        Assert.Contains("DISTRIBUTED_ADMIN_TOKEN_UNSET_IN_TESTS", ex.Message);
    }
}
