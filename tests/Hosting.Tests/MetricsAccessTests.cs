using System.Net;

namespace Distributed.Hosting.Tests;

public sealed class MetricsAccessTests
{
    private const string Token = "metrics-token-0123456789abcdef";

    [Theory]
    [InlineData("Bearer " + Token, "10.1.2.3", MetricsAccess.Decision.Allowed)]
    [InlineData("bearer " + Token, "127.0.0.1", MetricsAccess.Decision.Allowed)]
    [InlineData(null, "127.0.0.1", MetricsAccess.Decision.Unauthorized)]
    [InlineData("Bearer wrong-token-0123456789ab", "::1", MetricsAccess.Decision.Unauthorized)]
    [InlineData(Token, "10.1.2.3", MetricsAccess.Decision.Unauthorized)]
    [InlineData("Basic " + Token, "10.1.2.3", MetricsAccess.Decision.Unauthorized)]
    public void WithAToken_EveryCallerMustPresentIt_LoopbackIncluded(string? authorization, string remote, MetricsAccess.Decision expected)
        => Assert.Equal(expected, new MetricsAccess(Token).Check(authorization, IPAddress.Parse(remote)));

    [Theory]
    [InlineData("127.0.0.1", MetricsAccess.Decision.Allowed)]
    [InlineData("127.8.9.10", MetricsAccess.Decision.Allowed)]
    [InlineData("::1", MetricsAccess.Decision.Allowed)]
    [InlineData("::ffff:127.0.0.1", MetricsAccess.Decision.Allowed)]
    [InlineData("10.1.2.3", MetricsAccess.Decision.Forbidden)]
    [InlineData("::ffff:10.1.2.3", MetricsAccess.Decision.Forbidden)]
    [InlineData("fe80::1", MetricsAccess.Decision.Forbidden)]
    public void WithoutAToken_OnlyLoopbackCallersMayScrape(string remote, MetricsAccess.Decision expected)
    {
        var access = new MetricsAccess(null);
        Assert.False(access.RequiresToken);
        Assert.Equal(expected, access.Check(null, IPAddress.Parse(remote)));
        // A presented token changes nothing when none is configured: it cannot be checked.
        Assert.Equal(expected, access.Check("Bearer " + Token, IPAddress.Parse(remote)));
    }

    [Fact]
    public void WithoutAnIpConnection_TheCallerIsLocal()
        => Assert.Equal(MetricsAccess.Decision.Allowed, new MetricsAccess(null).Check(null, null));

    [Theory]
    [InlineData("short-token", true)]
    [InlineData("has whitespace in it 0123456789", true)]
    [InlineData(Token, false)]
    public void Validate_NamesABadMetricsToken_WithoutEchoingIt(string token, bool invalid)
    {
        var errors = new TelemetryOptions { MetricsToken = token }.Validate();
        Assert.Equal(invalid, errors.Any(e => e.Contains("Telemetry:MetricsToken", StringComparison.Ordinal)));
        Assert.DoesNotContain(errors, e => e.Contains(token, StringComparison.Ordinal));
    }
}
