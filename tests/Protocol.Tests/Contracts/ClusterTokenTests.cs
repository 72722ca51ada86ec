using Distributed.Protocol.Contracts;

namespace Distributed.Protocol.Tests.Contracts;

[Trait("Category", "Unit")]
public sealed class ClusterTokenTests
{
    private static readonly string Token = ClusterToken.Generate();

    [Fact]
    public void Generate_Gives43Base64UrlCharacters_ThatAlwaysPassValidation()
    {
        for (int i = 0; i < 2000; i++)
        {
            string t = ClusterToken.Generate();
            Assert.Equal(43, t.Length);
            Assert.All(t, c => Assert.True(char.IsAsciiLetterOrDigit(c) || c is '-' or '_'));
            Assert.Empty(ClusterToken.Validate(t, "t"));
        }
    }

    [Fact]
    public void Validate_AcceptsOpensslBase64AndHex()
    {
        var bytes = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        Assert.Empty(ClusterToken.Validate(Convert.ToBase64String(bytes), "t"));
        Assert.Empty(ClusterToken.Validate(Convert.ToHexStringLower(bytes), "t"));
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("short-but-random-Q7x", "characters")]
    [InlineData("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "predictable")]
    [InlineData("abababababababababababababababababababab", "predictable")]
    [InlineData("passwordpasswordpasswordpassword", "predictable")]
    [InlineData("Zm9vYmFyYmF6cXV4 with a space in the middle 1234", "visible ASCII")]
    [InlineData("Zm9vYmFyYmF6cXV4\u00e9Zm9vYmFyYmF6cXV4Zm9vYmFy", "visible ASCII")]
    public void Validate_RefusesWeakTokens_NamingTheKey_NeverQuotingTheToken(string token, string problem)
    {
        var problems = ClusterToken.Validate(token, "Cluster:Token");
        Assert.Contains(problems, p => p.Contains(problem, StringComparison.Ordinal) && p.Contains("Cluster:Token", StringComparison.Ordinal));
        if (token.Length > 0)
        {
            Assert.DoesNotContain(problems, p => p.Contains(token, StringComparison.Ordinal));
        }
        Assert.Throws<ArgumentException>(() => ClusterToken.Create(token));
    }

    [Fact]
    public void Verify_AcceptsExactlyBearerAndTheToken()
    {
        var credential = ClusterToken.Create(Token);
        Assert.True(credential.Verify("Bearer " + Token));
        Assert.True(credential.Verify("bearer " + Token));
        Assert.Equal("Bearer " + Token, credential.AuthorizationValue);
        Assert.False(credential.Verify(null));
        Assert.False(credential.Verify(""));
        Assert.False(credential.Verify(Token));
        Assert.False(credential.Verify("Basic " + Token));
        Assert.False(credential.Verify("Bearer " + Token[..^1]));
        Assert.False(credential.Verify("Bearer " + Token + "x"));
        Assert.False(credential.Verify("Bearer  " + Token));
        Assert.False(credential.Verify("Bearer " + ClusterToken.Generate()));
        Assert.False(credential.Verify("Bearer " + new string('x', 100_000)));
    }

    [Fact]
    public void Verify_AcceptsThePreviousTokenDuringARotation()
    {
        string previous = ClusterToken.Generate();
        var credential = ClusterToken.Create(Token, previous);
        Assert.True(credential.Verify("Bearer " + Token));
        Assert.True(credential.Verify("Bearer " + previous));
        Assert.Equal("Bearer " + Token, credential.AuthorizationValue);
        Assert.False(ClusterToken.Create(Token).Verify("Bearer " + previous));
    }

    [Fact]
    public void ToString_ShowsAFingerprint_NotTheToken()
    {
        string text = ClusterToken.Create(Token).ToString();
        Assert.DoesNotContain(Token, text);
        Assert.StartsWith("cluster token sha256:", text);
    }

    [Fact]
    public void Resolve_PrefersConfiguration_AndTreatsEmptyAsUnset()
    {
        var config = new Dictionary<string, string?> { [ClusterToken.ConfigurationKey] = "from-config", [ClusterToken.PreviousConfigurationKey] = "" };
        var (token, previous) = ClusterToken.Resolve(k => config.GetValueOrDefault(k));
        Assert.Equal("from-config", token);
        Assert.Equal(Environment.GetEnvironmentVariable(ClusterToken.PreviousEnvironmentVariable) is { Length: > 0 } p ? p : null, previous);
    }
}
