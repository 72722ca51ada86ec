using System.Net;
using Microsoft.AspNetCore.Http;

namespace Distributed.Hosting;

/// <summary>
/// Who may read <c>/metrics</c>: with a token, callers presenting <c>Authorization: Bearer TOKEN</c> (from anywhere);
/// without one, callers on loopback only (a developer's curl, a same-host agent). Everyone else is refused before any
/// series is rendered: 401 with <c>WWW-Authenticate: Bearer</c> for a missing or wrong token, 403 naming the setting
/// when no token is configured.
/// </summary>
public sealed class MetricsAccess
{
    private readonly BearerTokenAuthenticator? _authenticator;

    /// <summary>What <see cref="Check"/> decided.</summary>
    public enum Decision
    {
        /// <summary>Serve the scrape.</summary>
        Allowed,

        /// <summary>A token is configured and the caller did not present it (401).</summary>
        Unauthorized,

        /// <summary>No token is configured and the caller is not on loopback (403).</summary>
        Forbidden,
    }

    /// <summary>Creates the guard for <paramref name="token"/> (null: loopback callers only).</summary>
    public MetricsAccess(string? token) => _authenticator = string.IsNullOrEmpty(token) ? null : new BearerTokenAuthenticator(token);

    /// <summary>True when a token is configured.</summary>
    public bool RequiresToken => _authenticator is not null;

    /// <summary>Decides for a caller presenting <paramref name="authorization"/> from <paramref name="remote"/> (null: not an IP
    /// connection, e.g. an in-process test server, which counts as local).</summary>
    public Decision Check(string? authorization, IPAddress? remote)
    {
        if (_authenticator is not null)
        {
            return _authenticator.IsAuthorized(authorization) ? Decision.Allowed : Decision.Unauthorized;
        }
        return remote is null || IPAddress.IsLoopback(remote) || (remote.IsIPv4MappedToIPv6 && IPAddress.IsLoopback(remote.MapToIPv4()))
            ? Decision.Allowed
            : Decision.Forbidden;
    }

    /// <summary>Writes the refusal for <paramref name="decision"/> (text/plain, says what to configure; never the token).</summary>
    public Task RefuseAsync(HttpContext context, Decision decision)
    {
        ArgumentNullException.ThrowIfNull(context);
        context.Response.ContentType = "text/plain; charset=utf-8";
        if (decision == Decision.Unauthorized)
        {
            context.Response.StatusCode = StatusCodes.Status401Unauthorized;
            context.Response.Headers.WWWAuthenticate = "Bearer";
            return context.Response.WriteAsync("metrics: missing or wrong bearer token (Authorization: Bearer <Telemetry:MetricsToken>)\n");
        }
        context.Response.StatusCode = StatusCodes.Status403Forbidden;
        return context.Response.WriteAsync(
            $"metrics: only loopback callers may scrape without a token; set Telemetry:MetricsToken ({TelemetryOptions.MetricsTokenEnvironmentVariable}) on this process and give it to the scraper\n");
    }
}
