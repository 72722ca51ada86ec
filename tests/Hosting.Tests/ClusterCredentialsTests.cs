using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Distributed.Hosting.Tests;

public sealed class ClusterCredentialsTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"cluster-creds-{Guid.NewGuid():N}");

    [Fact]
    public void CreateDevelopment_WritesPrivateFilesThatLoadAndChain()
    {
        var options = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "a"), TimeSpan.FromDays(1));
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.Combine(_dir, "a")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(options.KeyPath!));
        }
        using var credentials = ClusterCredentials.Load(options)!;
        Assert.True(credentials.Certificate.HasPrivateKey);
        Assert.True(credentials.ValidatePeer(credentials.Certificate, null, SslPolicyErrors.RemoteCertificateNameMismatch | SslPolicyErrors.RemoteCertificateChainErrors));
    }

    [Fact]
    public void ValidatePeer_RefusesACertificateOfAnotherClusterAndNone()
    {
        using var mine = ClusterCredentials.Load(ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "mine"), TimeSpan.FromDays(1)))!;
        using var other = ClusterCredentials.Load(ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "other"), TimeSpan.FromDays(1)))!;
        Assert.False(mine.ValidatePeer(other.Certificate, null, SslPolicyErrors.None));
        Assert.False(mine.ValidatePeer(null, null, SslPolicyErrors.None));
        Assert.False(mine.ValidatePeer(mine.Certificate, null, SslPolicyErrors.RemoteCertificateNotAvailable));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var selfSigned = new CertificateRequest("CN=distributed local node", key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddDays(1));
        Assert.False(mine.ValidatePeer(selfSigned, null, SslPolicyErrors.None));
    }

    [Fact]
    public void Load_NamesTheProblem()
    {
        var good = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "g"), TimeSpan.FromDays(1));
        var other = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "o"), TimeSpan.FromDays(1));
        Assert.Null(ClusterCredentials.Load(new ClusterTlsOptions()));
        var missing = Assert.Throws<InvalidOperationException>(() => ClusterCredentials.Load(new ClusterTlsOptions { CertificatePath = Path.Combine(_dir, "nope.pem"), CaPath = good.CaPath }));
        Assert.Contains("Tls:CertificatePath", missing.Message, StringComparison.Ordinal);
        var foreign = Assert.Throws<InvalidOperationException>(() => ClusterCredentials.Load(good.WithCa(other.CaPath!)));
        Assert.Contains("does not chain", foreign.Message, StringComparison.Ordinal);
        var noKey = Assert.Throws<InvalidOperationException>(() => ClusterCredentials.Load(new ClusterTlsOptions { CertificatePath = good.CertificatePath, CaPath = good.CaPath }));
        Assert.Contains("key", noKey.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Theory]
    [InlineData("127.0.0.1", false, false, false, null)]
    [InlineData("10.0.0.5", false, false, false, "without TLS")]
    [InlineData("10.0.0.5", false, true, false, null)]
    [InlineData("10.0.0.5", true, false, false, null)]
    [InlineData("10.0.0.5", true, false, true, "without TLS")]
    public void RefuseCleartext_OnlyOffLoopbackWithoutTlsOrInsecure(string address, bool tls, bool insecure, bool plaintextDataPlane, string? refused)
    {
        var options = new ClusterTlsOptions { CertificatePath = tls ? "c.pem" : null, CaPath = tls ? "ca.pem" : null, AllowInsecure = insecure, DataPlane = !plaintextDataPlane };
        string? reason = options.RefuseCleartext(IPAddress.Parse(address), "the data plane", dataPlane: true);
        if (refused is null)
        {
            Assert.Null(reason);
        }
        else
        {
            Assert.Contains(refused, reason, StringComparison.Ordinal);
            Assert.Contains("--insecure", reason, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Validate_NeedsTheCaWithACertificate()
    {
        Assert.Empty(new ClusterTlsOptions().Validate());
        Assert.Contains(new ClusterTlsOptions { CertificatePath = "c.pem" }.Validate(), e => e.Contains("Tls:CaPath", StringComparison.Ordinal));
        Assert.Contains(new ClusterTlsOptions { CaPath = "ca.pem" }.Validate(), e => e.Contains("need Tls:CertificatePath", StringComparison.Ordinal));
    }

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }
}

internal static class TlsOptionsTestExtensions
{
    public static ClusterTlsOptions WithCa(this ClusterTlsOptions options, string ca)
        => new() { CertificatePath = options.CertificatePath, KeyPath = options.KeyPath, CaPath = ca };
}
