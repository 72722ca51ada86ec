using System.Security.Cryptography;
using System.Text;

namespace Distributed.Hosting;

/// <summary>
/// Checks <c>Authorization: Bearer &lt;token&gt;</c> against the configured token in constant time (both sides are
/// hashed first, so neither the length nor any prefix of the token leaks through timing). Holds only the token's hash.
/// The admin API (its token), the OpenAI API (its API key) and the metrics endpoints (their token) authenticate their
/// callers with it.
/// </summary>
public sealed class BearerTokenAuthenticator
{
    private readonly byte[] _expected;

    /// <summary>Creates the authenticator for <paramref name="token"/>.</summary>
    public BearerTokenAuthenticator(string token)
    {
        ArgumentException.ThrowIfNullOrEmpty(token);
        _expected = SHA256.HashData(Encoding.UTF8.GetBytes(token));
    }

    /// <summary>True when <paramref name="authorization"/> is <c>Bearer</c> followed by the configured token.</summary>
    public bool IsAuthorized(string? authorization)
    {
        if (authorization is null || !authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        var presented = authorization.AsSpan(7).Trim();
        if (presented.IsEmpty || presented.Length > 4096)
        {
            return false;
        }
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(Encoding.UTF8.GetBytes(presented.ToString()), hash);
        return CryptographicOperations.FixedTimeEquals(hash, _expected);
    }
}
