using Distributed.ExpertWorker.Hosting;
using Distributed.Protocol.Contracts;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Tests.Hosting;

/// <summary>The start-up decision about the cluster credential: required, strong, and never shown in an error.</summary>
[Trait("Category", "Unit")]
public sealed class DataPlaneSecurityTests
{
    private static IConfiguration Config(params (string Key, string Value)[] pairs)
        => new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    private static bool EnvironmentHasToken => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ClusterToken.EnvironmentVariable));

    [Fact]
    public void Token_IsRequired_UnlessAllowedOnLoopback()
    {
        if (EnvironmentHasToken)
        {
            return; // The environment supplies one; the "no token" decisions cannot be observed here.
        }
        var none = Assert.Throws<OptionsValidationException>(() => DataPlaneSecurity.ResolveCredential(Config(), new ExpertWorkerOptions()));
        Assert.Contains(none.Failures, f => f.Contains(ClusterToken.EnvironmentVariable, StringComparison.Ordinal)
            && f.Contains("AllowUnauthenticated", StringComparison.Ordinal));
        Assert.Null(DataPlaneSecurity.ResolveCredential(Config(), new ExpertWorkerOptions { AllowUnauthenticated = true }));
        Assert.Null(DataPlaneSecurity.ResolveCredential(Config(), new ExpertWorkerOptions { AllowUnauthenticated = true, GrpcHost = "::1" }));
        var offLoopback = Assert.Throws<OptionsValidationException>(() =>
            DataPlaneSecurity.ResolveCredential(Config(), new ExpertWorkerOptions { AllowUnauthenticated = true, GrpcHost = "0.0.0.0" }));
        Assert.Contains(offLoopback.Failures, f => f.Contains("loopback only", StringComparison.Ordinal));
    }

    [Fact]
    public void ConfiguredToken_IsRequiredEvenWhenUnauthenticatedIsAllowed_AndAPreviousOneIsAccepted()
    {
        string token = ClusterToken.Generate();
        string previous = ClusterToken.Generate();
        var credential = DataPlaneSecurity.ResolveCredential(
            Config((ClusterToken.ConfigurationKey, token), (ClusterToken.PreviousConfigurationKey, previous)),
            new ExpertWorkerOptions { AllowUnauthenticated = true });
        Assert.NotNull(credential);
        Assert.True(credential!.Verify("Bearer " + token));
        Assert.True(credential.Verify("Bearer " + previous));
        Assert.False(credential.Verify(null));
    }

    [Fact]
    public void WeakToken_FailsStartup_WithoutShowingIt()
    {
        const string Weak = "changeme-changeme-changeme-changeme";
        var ex = Assert.Throws<OptionsValidationException>(() =>
            DataPlaneSecurity.ResolveCredential(Config((ClusterToken.ConfigurationKey, Weak)), new ExpertWorkerOptions()));
        Assert.Contains(ex.Failures, f => f.Contains("predictable", StringComparison.Ordinal));
        Assert.DoesNotContain(ex.Failures, f => f.Contains(Weak, StringComparison.Ordinal));
    }
}
