using System.Net;

namespace Distributed.Coordinator.Admin;

/// <summary>Settings of the cluster admin API. Section <c>Admin</c>.</summary>
public sealed class ClusterAdminOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Admin";

    /// <summary>Smallest accepted token length (characters).</summary>
    public const int MinTokenLength = 16;

    /// <summary>The bearer token every admin call must present. Secret: never logged. Default: none (then
    /// <see cref="TokenEnvironmentVariable"/> is read).</summary>
    public string? Token { get; set; }

    /// <summary>Environment variable holding the token when <see cref="Token"/> is not set. Default: <c>DISTRIBUTED_ADMIN_TOKEN</c>.</summary>
    public string TokenEnvironmentVariable { get; set; } = "DISTRIBUTED_ADMIN_TOKEN";

    /// <summary>IP address of a separate admin listener; null serves the admin API on the serving listener. Default: null.</summary>
    public string? Host { get; set; }

    /// <summary>TCP port of the separate admin listener (0 = any free port). Used only with <see cref="Host"/>. Default: 0.</summary>
    public int Port { get; set; }

    /// <summary>Port of a cleartext HTTP/2 listener for the gRPC admin service next to <see cref="Port"/> on
    /// <see cref="Host"/> (0 = any free port); null = none (gRPC clients then need the serving host's HTTP/2 port).
    /// Used only with <see cref="Host"/>. Default: null.</summary>
    public int? GrpcPort { get; set; }

    /// <summary>The configured token (<see cref="Token"/>, else the environment variable), or null.</summary>
    public string? ResolveToken()
        => !string.IsNullOrEmpty(Token) ? Token
            : string.IsNullOrWhiteSpace(TokenEnvironmentVariable) ? null
            : Environment.GetEnvironmentVariable(TokenEnvironmentVariable) is { Length: > 0 } t ? t : null;

    /// <summary>Every problem (each names its field; the token's value is never included).</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        string? token = ResolveToken();
        if (token is null)
        {
            errors.Add($"Admin:Token is required (or set the {TokenEnvironmentVariable} environment variable)");
        }
        else if (token.Length < MinTokenLength || token.Any(char.IsWhiteSpace) || token.Length > 4096)
        {
            errors.Add($"Admin:Token must be {MinTokenLength} to 4096 characters without whitespace");
        }
        if (Host is not null && !IPAddress.TryParse(Host, out _))
        {
            errors.Add($"Admin:Host '{Host}' is not an IP address");
        }
        if (Port is < 0 or > 65535)
        {
            errors.Add($"Admin:Port {Port} is not a TCP port");
        }
        if (GrpcPort is < 0 or > 65535)
        {
            errors.Add($"Admin:GrpcPort {GrpcPort} is not a TCP port");
        }
        if (GrpcPort is > 0 && GrpcPort == Port)
        {
            errors.Add("Admin:GrpcPort must differ from Admin:Port");
        }
        return errors;
    }
}
