using Distributed.Hosting;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Throw-away TLS credentials for one local cluster launch (<c>--local-workers</c>, tests): a CA and a node certificate
/// in a private temporary directory (mode 0700, files 0600), loaded for this process and handed to the workers through
/// their environment. Deleted on dispose.
/// </summary>
public sealed class LocalClusterCredentials : IDisposable
{
    private LocalClusterCredentials(string directory, ClusterTlsOptions options, ClusterCredentials credentials)
    {
        Directory = directory;
        Options = options;
        Credentials = credentials;
    }

    /// <summary>Where the PEM files are.</summary>
    public string Directory { get; }

    /// <summary>The options naming the files (data plane unencrypted: loopback).</summary>
    public ClusterTlsOptions Options { get; }

    /// <summary>The loaded credentials for this process.</summary>
    public ClusterCredentials Credentials { get; }

    /// <summary>Makes and loads a new CA and node certificate, valid for 30 days.</summary>
    public static LocalClusterCredentials Create()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"distributed-cluster-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            var options = ClusterCredentials.CreateDevelopment(dir, TimeSpan.FromDays(30));
            options.DataPlane = false;
            return new LocalClusterCredentials(dir, options, ClusterCredentials.Load(options)!);
        }
        catch
        {
            TryDelete(dir);
            throw;
        }
    }

    /// <summary>Adds the <c>DISTRIBUTED_Tls__*</c> variables a worker reads to <paramref name="environment"/>.</summary>
    public void AddTo(IDictionary<string, string> environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        environment["DISTRIBUTED_Tls__CertificatePath"] = Options.CertificatePath!;
        environment["DISTRIBUTED_Tls__KeyPath"] = Options.KeyPath!;
        environment["DISTRIBUTED_Tls__CaPath"] = Options.CaPath!;
        environment["DISTRIBUTED_Tls__DataPlane"] = Options.DataPlane ? "true" : "false";
    }

    private static void TryDelete(string dir)
    {
        try
        {
            if (System.IO.Directory.Exists(dir))
            {
                System.IO.Directory.Delete(dir, recursive: true);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Credentials.Dispose();
        TryDelete(Directory);
    }
}
