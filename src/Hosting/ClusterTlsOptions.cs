namespace Distributed.Hosting;

/// <summary>
/// The cluster's TLS credentials. Section <c>Tls</c>; from the environment as <c>DISTRIBUTED_Tls__CertificatePath</c>
/// and so on. When <see cref="CertificatePath"/> is set, every cluster link speaks mutual TLS: the workers' data-plane
/// port (the coordinator presents its certificate as a client), the Orleans silo-to-silo and client-to-gateway links.
/// A peer is accepted when its certificate chains to one of the authorities in <see cref="CaPath"/> (the cluster's own
/// CA; host names are not checked: a certificate the cluster CA signed is a cluster member wherever it connects from).
/// </summary>
public sealed class ClusterTlsOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Tls";

    /// <summary>PEM certificate of this process (leaf first; intermediates may follow). Null = TLS off. Default: null.</summary>
    public string? CertificatePath { get; set; }

    /// <summary>PEM private key of <see cref="CertificatePath"/>; null when the key is in the certificate file. Secret
    /// material: keep it readable by the service account only. Default: null.</summary>
    public string? KeyPath { get; set; }

    /// <summary>PEM bundle of the certificate authorities peers must chain to. Required with <see cref="CertificatePath"/>. Default: null.</summary>
    public string? CaPath { get; set; }

    /// <summary>
    /// Allows listening on (or connecting to) a non-loopback address without TLS. Without it such a configuration is
    /// refused at start-up; with it, a warning is logged. Loopback never needs it. Default: false.
    /// </summary>
    public bool AllowInsecure { get; set; }

    /// <summary>
    /// With TLS configured: also encrypt the workers' data-plane port (else only the Orleans links use TLS and the data
    /// plane authenticates callers by the cluster token alone, which is meant for loopback). Default: true.
    /// </summary>
    public bool DataPlane { get; set; } = true;

    /// <summary>True when TLS is configured.</summary>
    public bool Enabled => !string.IsNullOrWhiteSpace(CertificatePath);

    /// <summary>Every problem with these options (empty when valid); each names its key. Files are checked when loaded.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (Enabled && string.IsNullOrWhiteSpace(CaPath))
        {
            errors.Add("Tls:CaPath is required when Tls:CertificatePath is set (the cluster CA that peers' certificates must chain to)");
        }
        if (!Enabled && (!string.IsNullOrWhiteSpace(KeyPath) || !string.IsNullOrWhiteSpace(CaPath)))
        {
            errors.Add("Tls:KeyPath and Tls:CaPath need Tls:CertificatePath");
        }
        return errors;
    }

    /// <summary>
    /// Null when listening on <paramref name="address"/> is allowed; otherwise why not (a non-loopback address without TLS
    /// and without <see cref="AllowInsecure"/>). <paramref name="dataPlane"/>: the listener is the data-plane port (which
    /// <see cref="DataPlane"/> may leave unencrypted).
    /// </summary>
    public string? RefuseCleartext(System.Net.IPAddress address, string what, bool dataPlane = false)
    {
        ArgumentNullException.ThrowIfNull(address);
        if ((Enabled && (DataPlane || !dataPlane)) || AllowInsecure || System.Net.IPAddress.IsLoopback(address))
        {
            return null;
        }
        return $"{what} would listen on {address} without TLS: set Tls:CertificatePath, Tls:KeyPath and Tls:CaPath (infra/make-cluster-certs.sh), or pass --insecure (Tls:AllowInsecure) to accept cleartext on this network";
    }
}
