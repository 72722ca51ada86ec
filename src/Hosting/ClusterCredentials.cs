using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Distributed.Hosting;

/// <summary>
/// The loaded TLS identity of one process (certificate with its private key) and the cluster's trust anchors. One
/// validator serves every link (Kestrel client certificates, the coordinator's data-plane client, Orleans TLS):
/// the peer must present a certificate that chains to a cluster CA, and nothing else is trusted (not the system
/// store). Host names are not compared: a certificate the cluster CA signed identifies a cluster member.
/// </summary>
public sealed class ClusterCredentials : IDisposable
{
    private readonly X509Certificate2Collection _authorities;

    private ClusterCredentials(X509Certificate2 certificate, X509Certificate2Collection authorities, X509Certificate2Collection intermediates)
    {
        Certificate = certificate;
        _authorities = authorities;
        Intermediates = intermediates;
    }

    /// <summary>This process's certificate, with its private key.</summary>
    public X509Certificate2 Certificate { get; }

    /// <summary>Intermediate certificates that followed the leaf in the certificate file (sent with it).</summary>
    public X509Certificate2Collection Intermediates { get; }

    /// <summary>Loads the files named by <paramref name="options"/>; null when TLS is off.</summary>
    /// <exception cref="InvalidOperationException">A file is missing or unusable; the message names the key and the file.</exception>
    public static ClusterCredentials? Load(ClusterTlsOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!options.Enabled)
        {
            return null;
        }
        string certPath = options.CertificatePath!;
        string caPath = options.CaPath ?? throw new InvalidOperationException("Tls:CaPath is required when Tls:CertificatePath is set");
        X509Certificate2 leaf;
        var intermediates = new X509Certificate2Collection();
        try
        {
            var loaded = X509Certificate2.CreateFromPemFile(certPath, string.IsNullOrWhiteSpace(options.KeyPath) ? null : options.KeyPath);
            // Linux SslStream needs a key it can export to its own store; re-import as PKCS#12 (in memory only).
            leaf = X509CertificateLoader.LoadPkcs12(loaded.Export(X509ContentType.Pkcs12), null);
            loaded.Dispose();
            var all = new X509Certificate2Collection();
            all.ImportFromPemFile(certPath);
            foreach (var c in all.Skip(1))
            {
                intermediates.Add(c);
            }
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new InvalidOperationException($"Tls:CertificatePath '{certPath}' (key {(options.KeyPath is null ? "in the same file" : $"'{options.KeyPath}'")}) is not a usable PEM certificate with its private key: {ex.Message}", ex);
        }
        if (!leaf.HasPrivateKey)
        {
            leaf.Dispose();
            throw new InvalidOperationException($"Tls:CertificatePath '{certPath}' has no private key (set Tls:KeyPath)");
        }
        var authorities = new X509Certificate2Collection();
        try
        {
            authorities.ImportFromPemFile(caPath);
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException)
        {
            leaf.Dispose();
            throw new InvalidOperationException($"Tls:CaPath '{caPath}' is not a readable PEM bundle: {ex.Message}", ex);
        }
        if (authorities.Count == 0)
        {
            leaf.Dispose();
            throw new InvalidOperationException($"Tls:CaPath '{caPath}' holds no certificate");
        }
        var credentials = new ClusterCredentials(leaf, authorities, intermediates);
        if (!credentials.Chains(leaf))
        {
            credentials.Dispose();
            throw new InvalidOperationException($"Tls:CertificatePath '{certPath}' does not chain to an authority in Tls:CaPath '{caPath}' (or has expired): peers would refuse it");
        }
        return credentials;
    }

    /// <summary>
    /// The peer-validation callback of every link: true when <paramref name="certificate"/> chains to a cluster CA.
    /// <paramref name="errors"/> from the platform are ignored (they judge against the system store and the host
    /// name, neither of which applies), except that a missing certificate is refused.
    /// </summary>
    public bool ValidatePeer(X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0)
        {
            return false;
        }
        // The intermediates the peer sent arrive in the platform's chain.
        var sent = new X509Certificate2Collection();
        foreach (var element in chain?.ChainElements ?? (IEnumerable<X509ChainElement>)[])
        {
            sent.Add(element.Certificate);
        }
        if (certificate is X509Certificate2 peer)
        {
            return Chains(peer, sent);
        }
        using var copy = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        return Chains(copy, sent);
    }

    private bool Chains(X509Certificate2 certificate, X509Certificate2Collection? extra = null)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_authorities);
        chain.ChainPolicy.ExtraStore.AddRange(Intermediates);
        if (extra is not null)
        {
            chain.ChainPolicy.ExtraStore.AddRange(extra);
        }
        // Cluster CAs are private and short-lived certificates are rotated (OPERATIONS "Security"); no CRL endpoint exists.
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationFlags = X509VerificationFlags.NoFlag;
        return chain.Build(certificate);
    }

    /// <summary>
    /// Writes a throw-away cluster CA and one certificate it signed (for every process of a local cluster) into
    /// <paramref name="directory"/>, which is created readable by this user only: <c>ca.pem</c>, <c>node.pem</c>,
    /// <c>node.key</c>. Returns the options naming them. For <c>--local-workers</c> and tests; production clusters
    /// use the operator's CA (<c>infra/make-cluster-certs.sh</c>).
    /// </summary>
    public static ClusterTlsOptions CreateDevelopment(string directory, TimeSpan lifetime)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(directory);
        }
        else
        {
            Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        var now = DateTimeOffset.UtcNow;
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=distributed local cluster CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        using var ca = caRequest.CreateSelfSigned(now.AddMinutes(-5), now + lifetime);

        using var nodeKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var nodeRequest = new CertificateRequest("CN=distributed local node", nodeKey, HashAlgorithmName.SHA256);
        nodeRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        nodeRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        nodeRequest.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false)); // server and client authentication
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        nodeRequest.CertificateExtensions.Add(san.Build());
        byte[] serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using var node = nodeRequest.Create(ca, now.AddMinutes(-5), now + lifetime - TimeSpan.FromMinutes(1), serial);

        string caPath = Path.Combine(directory, "ca.pem");
        string certPath = Path.Combine(directory, "node.pem");
        string keyPath = Path.Combine(directory, "node.key");
        WritePrivate(caPath, ca.ExportCertificatePem());
        WritePrivate(certPath, node.ExportCertificatePem());
        WritePrivate(keyPath, nodeKey.ExportPkcs8PrivateKeyPem());
        return new ClusterTlsOptions { CertificatePath = certPath, KeyPath = keyPath, CaPath = caPath };
    }

    private static void WritePrivate(string path, string pem)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        using var stream = new FileStream(path, options);
        using var writer = new StreamWriter(stream);
        writer.Write(pem);
        writer.Write('\n');
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Certificate.Dispose();
        foreach (var c in _authorities)
        {
            c.Dispose();
        }
        foreach (var c in Intermediates)
        {
            c.Dispose();
        }
    }
}
