using Distributed.Coordinator.Admin;
using Distributed.Protocol.Grains;

namespace Distributed.Coordinator.Tests.Admin;

public sealed class ClusterAdminOptionsTests
{
    private const string Token = "0123456789abcdef-token";

    [Fact]
    [Trait("Category", "Unit")]
    public void DefaultsShouldNotChange()
    {
        var o = new ClusterAdminOptions();
        Assert.Equal("Admin", ClusterAdminOptions.SectionName);
        Assert.Null(o.Token);
        Assert.Equal("DISTRIBUTED_ADMIN_TOKEN", o.TokenEnvironmentVariable);
        Assert.Null(o.Host);
        Assert.Equal(0, o.Port);
        Assert.Null(o.GrpcPort);
        Assert.Equal(16, ClusterAdminOptions.MinTokenLength);
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(null, null, 0, null, "Admin:Token is required")]
    [InlineData("short", null, 0, null, "Admin:Token must be")]
    [InlineData("has a space in the token", null, 0, null, "Admin:Token must be")]
    [InlineData(Token, "localhost", 0, null, "Admin:Host 'localhost'")]
    [InlineData(Token, "127.0.0.1", 70000, null, "Admin:Port 70000")]
    [InlineData(Token, "127.0.0.1", 9000, -1, "Admin:GrpcPort -1")]
    [InlineData(Token, "127.0.0.1", 9000, 9000, "must differ")]
    public void InvalidSettings_AreNamed_AndNeverEchoTheToken(string? token, string? host, int port, int? grpcPort, string expected)
    {
        var o = new ClusterAdminOptions { Token = token, TokenEnvironmentVariable = "DISTRIBUTED_ADMIN_TOKEN_UNSET_IN_TESTS", Host = host, Port = port, GrpcPort = grpcPort };
        var errors = o.Validate();
        Assert.Contains(errors, e => e.Contains(expected, StringComparison.Ordinal));
        if (token is not null)
        {
            Assert.DoesNotContain(errors, e => e.Contains(token, StringComparison.Ordinal));
        }
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Token_ComesFromConfiguration_ElseTheEnvironmentVariable()
    {
        const string variable = "DISTRIBUTED_ADMIN_TOKEN_OPTIONS_TEST";
        Environment.SetEnvironmentVariable(variable, "from-the-environment-0123");
        try
        {
            Assert.Equal("from-the-environment-0123", new ClusterAdminOptions { TokenEnvironmentVariable = variable }.ResolveToken());
            Assert.Equal(Token, new ClusterAdminOptions { Token = Token, TokenEnvironmentVariable = variable }.ResolveToken());
            Assert.Empty(new ClusterAdminOptions { TokenEnvironmentVariable = variable }.Validate());
        }
        finally
        {
            Environment.SetEnvironmentVariable(variable, null);
        }
        Assert.Null(new ClusterAdminOptions { TokenEnvironmentVariable = variable }.ResolveToken());
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData("Bearer " + Token, true)]
    [InlineData("bearer " + Token, true)]
    [InlineData("Bearer  " + Token + " ", true)]
    [InlineData("Bearer " + Token + "x", false)]
    [InlineData("Bearer " + "0123456789abcdef-toke", false)]
    [InlineData("Basic " + Token, false)]
    [InlineData(Token, false)]
    [InlineData("Bearer ", false)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Authenticator_AcceptsOnlyTheBearerToken(string? header, bool expected)
        => Assert.Equal(expected, new Distributed.Hosting.BearerTokenAuthenticator(Token).IsAuthorized(header));

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(PlanChangeError.UnknownWorker, 404, Grpc.Core.StatusCode.NotFound)]
    [InlineData(PlanChangeError.UnknownExpert, 400, Grpc.Core.StatusCode.InvalidArgument)]
    [InlineData(PlanChangeError.InvalidArgument, 400, Grpc.Core.StatusCode.InvalidArgument)]
    [InlineData(PlanChangeError.InsufficientMemory, 409, Grpc.Core.StatusCode.FailedPrecondition)]
    [InlineData(PlanChangeError.LastHolder, 409, Grpc.Core.StatusCode.FailedPrecondition)]
    [InlineData(PlanChangeError.ChangeInProgress, 409, Grpc.Core.StatusCode.FailedPrecondition)]
    [InlineData(PlanChangeError.NoPlan, 409, Grpc.Core.StatusCode.FailedPrecondition)]
    public void PlanChangeErrors_MapToHttpAndGrpcStatus(string code, int http, Grpc.Core.StatusCode grpc)
    {
        var ex = AdminException.From(new PlanChangeError(code, "why", "add[0]"));
        Assert.Equal((http, grpc, code), (ex.HttpStatus, ex.GrpcStatus, ex.Code));
        Assert.Equal(new AdminErrorBody(code, "why", "add[0]"), ex.ToResponse().Error);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Json_IsSnakeCase_AndRejectsUnknownMembers()
    {
        string json = System.Text.Json.JsonSerializer.Serialize(new RebalanceRequestBody(true, 2, "total"), AdminEndpoints.Json);
        Assert.Equal("""{"dry_run":true,"extra_replicas_per_layer":2,"load_window":"total"}""", json);
        Assert.Throws<System.Text.Json.JsonException>(() => System.Text.Json.JsonSerializer.Deserialize<RebalanceRequestBody>("""{"dryRun":true}""", AdminEndpoints.Json));
        Assert.Throws<System.Text.Json.JsonException>(() => System.Text.Json.JsonSerializer.Deserialize<ReplicaChangeRequest>("""{"add":[{"expert":1}]}""", AdminEndpoints.Json));
    }
}
