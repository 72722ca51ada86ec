using Distributed.Hosting;
using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Serving.Hosting;

/// <summary>
/// Authenticates the OpenAI API's callers: a request to <c>/v1/*</c>, <c>/tokenize</c> or <c>/detokenize</c> without
/// <c>Authorization: Bearer KEY</c> matching <see cref="ServeOptions.ApiKey"/> gets 401 (OpenAI's <c>invalid_api_key</c>
/// error, <c>WWW-Authenticate: Bearer</c>) before its body is read. Health probes stay open for probes; <c>/metrics</c> has its own
/// token (<see cref="Distributed.Hosting.TelemetryOptions.MetricsToken"/>), the admin API its own.
/// </summary>
public sealed class ApiKeyMiddleware(RequestDelegate next, BearerTokenAuthenticator authenticator)
{
    /// <summary>True for the paths the API key protects.</summary>
    public static bool IsProtected(PathString path)
        => path.StartsWithSegments("/v1", StringComparison.OrdinalIgnoreCase)
            || path.StartsWithSegments("/tokenize", StringComparison.OrdinalIgnoreCase)
            || path.StartsWithSegments("/detokenize", StringComparison.OrdinalIgnoreCase);

    /// <summary>Runs the check for one request.</summary>
    public Task InvokeAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (!IsProtected(context.Request.Path) || authenticator.IsAuthorized(context.Request.Headers.Authorization))
        {
            return next(context);
        }
        // Set as the response starts: writing the error clears the headers set before it.
        context.Response.OnStarting(() =>
        {
            context.Response.Headers.WWWAuthenticate = "Bearer";
            return Task.CompletedTask;
        });
        return ApiErrorMiddleware.WriteErrorAsync(context, new ApiErrorException(401, ApiErrorTypes.InvalidRequest,
            "Missing or wrong API key: send it as 'Authorization: Bearer KEY' (the client's apiKey).", null, "invalid_api_key"));
    }
}
