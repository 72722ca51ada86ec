namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// The outermost handler of the API: turns <see cref="ApiErrorException"/> and Kestrel's body-size and bad-request
/// errors into OpenAI error objects, treats a cancelled request whose client went away as the end of the story, and
/// logs everything else in full before answering 500. After the response has started nothing can be rewritten; the
/// connection is aborted instead.
/// </summary>
public sealed partial class ApiErrorMiddleware(RequestDelegate next, ILogger<ApiErrorMiddleware> logger)
{
    /// <summary>Runs the pipeline for one request.</summary>
    public async Task InvokeAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        try
        {
            await next(context).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            LogClientDisconnected(context.Request.Path);
        }
        catch (ApiErrorException ex)
        {
            await WriteErrorAsync(context, ex).ConfigureAwait(false);
        }
        catch (BadHttpRequestException ex)
        {
            var error = ex.StatusCode == StatusCodes.Status413PayloadTooLarge
                ? new ApiErrorException(413, ApiErrorTypes.InvalidRequest, $"The request body is larger than this server's limit: {ex.Message}", null, "request_too_large")
                : new ApiErrorException(ex.StatusCode, ApiErrorTypes.InvalidRequest, $"Bad request: {ex.Message}", null, "bad_request");
            await WriteErrorAsync(context, error).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            LogUnhandled(ex, context.Request.Method, context.Request.Path);
            await WriteErrorAsync(context, new ApiErrorException(500, ApiErrorTypes.Server, "The server failed to handle the request; the failure was logged.", null, "internal_error"))
                .ConfigureAwait(false);
        }
    }

    /// <summary>Writes <paramref name="error"/> as the response, or aborts the connection if the response already started.</summary>
    public static async Task WriteErrorAsync(HttpContext context, ApiErrorException error)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(error);
        if (context.Response.HasStarted)
        {
            context.Abort();
            return;
        }
        context.Response.Clear();
        if (error.RetryAfter is { } retry)
        {
            context.Response.Headers.RetryAfter = OpenAiEndpoints.RetryAfterHeader(retry);
        }
        await OpenAiEndpoints.WriteJsonAsync(context, error.StatusCode, w => ApiErrorJson.Write(w, error)).ConfigureAwait(false);
    }

    /// <summary>For a 404 or 405 the router produced without a body: the OpenAI error object naming method and path.</summary>
    public static Task WriteStatusCodeErrorAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        int status = context.Response.StatusCode;
        string target = $"{context.Request.Method} {context.Request.Path}";
        var error = status switch
        {
            404 => new ApiErrorException(404, ApiErrorTypes.InvalidRequest, $"Unknown route: {target}. Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.", null, "not_found"),
            405 => new ApiErrorException(405, ApiErrorTypes.InvalidRequest, $"Method not allowed: {target}.", null, "method_not_allowed"),
            _ => new ApiErrorException(status, ApiErrorTypes.InvalidRequest, $"Request failed with status {status}: {target}.", null, null),
        };
        return OpenAiEndpoints.WriteJsonAsync(context, status, w => ApiErrorJson.Write(w, error));
    }

    [LoggerMessage(EventId = ServingApiEvents.UnhandledException, Level = LogLevel.Error, Message = "unhandled exception in {Method} {Path}")]
    private partial void LogUnhandled(Exception exception, string method, string path);

    [LoggerMessage(EventId = ServingApiEvents.ClientDisconnected, Level = LogLevel.Information, Message = "client disconnected from {Path} before the response completed")]
    private partial void LogClientDisconnected(string path);
}
