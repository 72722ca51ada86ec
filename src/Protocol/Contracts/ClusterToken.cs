using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;

namespace Distributed.Protocol.Contracts;

/// <summary>
/// The cluster token: the cluster's shared secret on the data plane (TLS identities are
/// <c>Distributed.Hosting.ClusterCredentials</c>, a separate thing): every call to a worker's gRPC port carries
/// <c>authorization: Bearer &lt;token&gt;</c>, and the worker compares it in constant time (SHA-256 of both sides, then
/// <see cref="CryptographicOperations.FixedTimeEquals"/>, so neither the length nor a prefix leaks through timing).
/// Holds the token itself only to send it (<see cref="AuthorizationValue"/>); <see cref="ToString"/> never shows it.
/// <para>Where it comes from (<see cref="Resolve"/>): the configuration key <c>Cluster:Token</c>, else the environment
/// variable <c>DISTRIBUTED_CLUSTER_TOKEN</c>. A worker also accepts a previous token (<c>Cluster:PreviousToken</c> /
/// <c>DISTRIBUTED_CLUSTER_TOKEN_PREVIOUS</c>) so a rotation needs no downtime.</para>
/// <para>Strength (<see cref="Validate"/>): at least <see cref="MinLength"/> characters of visible ASCII (no spaces), at
/// most <see cref="MaxLength"/>, and at least <see cref="MinEntropyBits"/> bits by the empirical Shannon estimate
/// (character frequencies × length), which a 32-byte random token in base64 or hex passes by a wide margin and a
/// repeated or dictionary-like phrase does not.</para>
/// </summary>
public sealed class ClusterToken
{
    /// <summary>Environment variable holding the token.</summary>
    public const string EnvironmentVariable = "DISTRIBUTED_CLUSTER_TOKEN";

    /// <summary>Environment variable holding the previous token a worker still accepts during a rotation.</summary>
    public const string PreviousEnvironmentVariable = "DISTRIBUTED_CLUSTER_TOKEN_PREVIOUS";

    /// <summary>Configuration key of the token (takes precedence over the environment variable).</summary>
    public const string ConfigurationKey = "Cluster:Token";

    /// <summary>Configuration key of the previous token.</summary>
    public const string PreviousConfigurationKey = "Cluster:PreviousToken";

    /// <summary>gRPC metadata key (HTTP/2 header) carrying the credential.</summary>
    public const string MetadataKey = "authorization";

    /// <summary>Fewest characters of a token.</summary>
    public const int MinLength = 32;

    /// <summary>Most characters of a token.</summary>
    public const int MaxLength = 1024;

    /// <summary>Least estimated entropy of a token, in bits.</summary>
    public const double MinEntropyBits = 128;

    private const string Scheme = "Bearer ";

    private readonly byte[] _hash;
    private readonly byte[] _previousHash;
    private readonly bool _hasPrevious;

    private ClusterToken(string token, string? previous)
    {
        AuthorizationValue = Scheme + token;
        _hash = SHA256.HashData(Encoding.UTF8.GetBytes(token));
        _hasPrevious = previous is not null;
        _previousHash = previous is null ? new byte[32] : SHA256.HashData(Encoding.UTF8.GetBytes(previous));
    }

    /// <summary>The value of the <c>authorization</c> header a client sends: <c>Bearer &lt;token&gt;</c>. Secret.</summary>
    public string AuthorizationValue { get; }

    /// <summary>The credential of <paramref name="token"/> (and a <paramref name="previous"/> one still accepted).</summary>
    /// <exception cref="ArgumentException">A token fails <see cref="Validate"/> (every problem listed).</exception>
    public static ClusterToken Create(string token, string? previous = null)
    {
        var problems = Validate(token, ConfigurationKey).Concat(previous is null ? [] : Validate(previous, PreviousConfigurationKey)).ToList();
        if (problems.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", problems));
        }
        return new ClusterToken(token, previous);
    }

    /// <summary>
    /// Reads the token and the previous token: <paramref name="configuration"/> (<c>Cluster:Token</c>,
    /// <c>Cluster:PreviousToken</c>), else the environment variables. Empty values count as unset.
    /// </summary>
    public static (string? Token, string? Previous) Resolve(Func<string, string?>? configuration = null)
    {
        static string? NonEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;
        return (NonEmpty(configuration?.Invoke(ConfigurationKey)) ?? NonEmpty(Environment.GetEnvironmentVariable(EnvironmentVariable)),
            NonEmpty(configuration?.Invoke(PreviousConfigurationKey)) ?? NonEmpty(Environment.GetEnvironmentVariable(PreviousEnvironmentVariable)));
    }

    /// <summary>Every reason <paramref name="token"/> is unfit as a cluster credential (empty when fit); each names
    /// <paramref name="name"/> and never quotes the token.</summary>
    public static IReadOnlyList<string> Validate(string? token, string name)
    {
        var problems = new List<string>();
        if (string.IsNullOrEmpty(token))
        {
            problems.Add($"{name} is empty");
            return problems;
        }
        if (token.Length < MinLength || token.Length > MaxLength)
        {
            problems.Add($"{name} has {token.Length} characters; it needs {MinLength} to {MaxLength} (e.g. `openssl rand -base64 32`)");
        }
        if (token.Any(c => c is < '!' or > '~'))
        {
            problems.Add($"{name} may hold only visible ASCII characters (no spaces or control characters)");
        }
        else if (EntropyBits(token) < MinEntropyBits)
        {
            problems.Add($"{name} is too predictable (about {EntropyBits(token):F0} bits estimated, {MinEntropyBits:F0} needed); use 32 random bytes, e.g. `openssl rand -base64 32`");
        }
        return problems;
    }

    /// <summary>Empirical Shannon entropy of <paramref name="text"/>'s characters × its length, in bits.</summary>
    public static double EntropyBits(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var counts = new Dictionary<char, int>();
        foreach (char c in text)
        {
            counts[c] = counts.GetValueOrDefault(c) + 1;
        }
        double perChar = 0;
        foreach (int n in counts.Values)
        {
            double p = n / (double)text.Length;
            perChar -= p * Math.Log2(p);
        }
        return perChar * text.Length;
    }

    /// <summary>A fresh token: 32 random bytes in unpadded base64url (43 characters).</summary>
    public static string Generate() => Base64Url.EncodeToString(RandomNumberGenerator.GetBytes(32));

    /// <summary>
    /// True when <paramref name="authorization"/> is <c>Bearer</c> (any case) followed by the token or the previous
    /// token. Time does not depend on which one matched, nor on how much of either matched.
    /// </summary>
    public bool Verify(string? authorization)
    {
        if (authorization is null || authorization.Length <= Scheme.Length || authorization.Length > Scheme.Length + MaxLength
            || !authorization.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        Span<byte> presented = stackalloc byte[32];
        var token = authorization.AsSpan(Scheme.Length);
        Span<byte> utf8 = stackalloc byte[Encoding.UTF8.GetMaxByteCount(MaxLength)];
        int n = Encoding.UTF8.GetBytes(token, utf8);
        SHA256.HashData(utf8[..n], presented);
        bool current = CryptographicOperations.FixedTimeEquals(presented, _hash);
        bool previous = CryptographicOperations.FixedTimeEquals(presented, _previousHash) & _hasPrevious;
        return current | previous;
    }

    /// <summary>A fingerprint for logs (first 8 hex digits of the token's SHA-256), never the token.</summary>
    public override string ToString() => $"cluster token sha256:{Convert.ToHexStringLower(_hash, 0, 4)}{(_hasPrevious ? " (+ previous)" : "")}";
}
