using System.Text.Json;
using System.Text.Json.Serialization;

namespace Distributed.Coordinator.Admin;

/// <summary>
/// The REST JSON admin API under <c>/admin/v1</c> (snake_case JSON; see docs/ADMIN-API.md). Every call needs
/// <c>Authorization: Bearer &lt;token&gt;</c>; a missing or wrong token gets 401 before anything is read or changed.
/// Errors are <see cref="AdminErrorResponse"/> bodies with the HTTP status of <see cref="AdminException"/>.
/// </summary>
public static partial class AdminEndpoints
{
    /// <summary>Route prefix of every admin endpoint.</summary>
    public const string Prefix = "/admin/v1";

    /// <summary>Name of the OpenAPI document (served at <c>/admin/v1/openapi.json</c>).</summary>
    public const string OpenApiDocument = "openapi";

    /// <summary>Largest accepted request body.</summary>
    public const int MaxBodyBytes = 1 << 20;

    /// <summary>The JSON settings of the admin API (snake_case names, enums as strings, unknown members rejected).</summary>
    public static JsonSerializerOptions Json { get; } = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DictionaryKeyPolicy = null,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    /// <summary>Maps the endpoints; <see cref="ClusterAdmin"/> and <see cref="Distributed.Hosting.BearerTokenAuthenticator"/> come from the services.</summary>
    public static RouteGroupBuilder MapAdminEndpoints(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var group = endpoints.MapGroup(Prefix).AddEndpointFilter(AuthorizeAsync).WithTags("admin");
        group.MapGet("/cluster", (HttpContext http, CancellationToken ct) => RunAsync(async () => Results.Json(await Admin(http).GetClusterAsync(ct), Json)))
            .WithName("GetCluster").WithSummary("Workers: endpoints, state, memory used/capacity, experts held, health; plan state.")
            .Produces<ClusterInfo>().ProducesAdminErrors();
        group.MapGet("/placement", (HttpContext http, CancellationToken ct) => RunAsync(async () => Results.Json(await Admin(http).GetPlacementAsync(ct), Json)))
            .WithName("GetPlacement").WithSummary("Plan version; per MoE layer, expert -> workers holding it (primary first).")
            .Produces<PlacementInfo>().ProducesAdminErrors();
        group.MapGet("/experts/load", (HttpContext http, CancellationToken ct) => RunAsync(() => Task.FromResult(Results.Json(Admin(http).GetExpertLoad(), Json))))
            .WithName("GetExpertLoad").WithSummary("Per layer and expert: tokens routed over the recent window and in total; per worker: rows, bytes, dispatch latency.")
            .Produces<ExpertLoadInfo>().ProducesAdminErrors();
        group.MapGet("/serving", (HttpContext http, CancellationToken ct) => RunAsync(() => Task.FromResult(Results.Json(Admin(http).GetServing(), Json))))
            .WithName("GetServing").WithSummary("The scheduler now (queue, running batch, KV blocks) and its counters since start (tokens, finished requests, time to first token and between tokens).")
            .Produces<ServingInfo>().ProducesAdminErrors();
        group.MapGet("/operations/{id}", (string id, HttpContext http, CancellationToken ct) => RunAsync(async () => Results.Json(await Admin(http).GetOperationAsync(id, ct), Json)))
            .WithName("GetOperation").WithSummary("Progress and outcome of a plan change.")
            .Produces<OperationInfo>().ProducesAdminErrors();
        group.MapPost("/workers/{id}/drain", (string id, HttpContext http, CancellationToken ct) => RunAsync(async () => Accepted(await Admin(http).DrainAsync(id, ct))))
            .WithName("DrainWorker").WithSummary("Moves the worker's experts elsewhere (staged); once completed the worker holds nothing and is safe to stop.")
            .Produces<OperationInfo>(StatusCodes.Status202Accepted).Produces<OperationInfo>().ProducesAdminErrors();
        group.MapPost("/experts/replicas", (HttpContext http, CancellationToken ct) => RunAsync(async () =>
        {
            var body = await ReadBodyAsync<ReplicaChangeRequest>(http, ct);
            return Accepted(await Admin(http).ChangeReplicasAsync(body, ct));
        }))
            .WithName("ChangeReplicas").WithSummary("Adds or removes replicas of layer/expert pairs on given or chosen workers (all or nothing).")
            .Accepts<ReplicaChangeRequest>("application/json")
            .Produces<OperationInfo>(StatusCodes.Status202Accepted).Produces<OperationInfo>().ProducesAdminErrors();
        group.MapPost("/rebalance", (HttpContext http, CancellationToken ct) => RunAsync(async () =>
        {
            var body = http.Request.ContentLength is 0 || (http.Request.ContentLength is null && !http.Request.HasJsonContentType())
                ? new RebalanceRequestBody()
                : await ReadBodyAsync<RebalanceRequestBody>(http, ct);
            var result = await Admin(http).RebalanceAsync(body, ct);
            return Results.Json(result, Json, statusCode: result.DryRun || result.Operation?.State != "Staging" ? StatusCodes.Status200OK : StatusCodes.Status202Accepted);
        }))
            .WithName("Rebalance").WithSummary("Recomputes placement from measured load (replicate hot experts, pack by load and memory); dry_run returns the proposal and its predicted balance.")
            .Accepts<RebalanceRequestBody>("application/json")
            .Produces<RebalanceResult>().Produces<RebalanceResult>(StatusCodes.Status202Accepted).ProducesAdminErrors();
        return group;
    }

    // Resolved inside the handler, after the token check: an unauthenticated call never touches the cluster.
    private static ClusterAdmin Admin(HttpContext http) => http.RequestServices.GetRequiredService<ClusterAdmin>();

    private static RouteHandlerBuilder ProducesAdminErrors(this RouteHandlerBuilder builder)
        => builder.Produces<AdminErrorResponse>(StatusCodes.Status400BadRequest).Produces<AdminErrorResponse>(StatusCodes.Status401Unauthorized)
            .Produces<AdminErrorResponse>(StatusCodes.Status404NotFound).Produces<AdminErrorResponse>(StatusCodes.Status409Conflict)
            .Produces<AdminErrorResponse>(StatusCodes.Status503ServiceUnavailable);

    private static IResult Accepted(OperationInfo op)
        => op.State == "Staging"
            ? new LocationResult(Results.Json(op, Json, statusCode: StatusCodes.Status202Accepted), $"{Prefix}/operations/{op.Id}")
            : Results.Json(op, Json);

    private static async ValueTask<object?> AuthorizeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var http = context.HttpContext;
        var auth = http.RequestServices.GetRequiredService<Distributed.Hosting.BearerTokenAuthenticator>();
        if (!auth.IsAuthorized(http.Request.Headers.Authorization.ToString()))
        {
            var log = http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(AdminEndpoints));
            LogRefused(log, http.Request.Method, http.Request.Path.ToString(), http.Connection.RemoteIpAddress?.ToString() ?? "?",
                http.Request.Headers.Authorization.Count == 0 ? "no Authorization header" : "wrong token or scheme");
            http.Response.Headers.WWWAuthenticate = "Bearer";
            return Results.Json(new AdminErrorResponse(new AdminErrorBody("unauthorized", "a valid 'Authorization: Bearer <token>' header is required", "authorization")),
                Json, statusCode: StatusCodes.Status401Unauthorized);
        }
        return await next(context);
    }

    private static async Task<IResult> RunAsync(Func<Task<IResult>> action)
    {
        try
        {
            return await action();
        }
        catch (AdminException ex)
        {
            return Results.Json(ex.ToResponse(), Json, statusCode: ex.HttpStatus);
        }
    }

    private static async Task<T> ReadBodyAsync<T>(HttpContext http, CancellationToken ct)
        where T : class
    {
        if (!http.Request.HasJsonContentType())
        {
            throw new AdminException(400, "invalid_argument", "the body must be JSON (Content-Type: application/json)", "body");
        }
        if (http.Request.ContentLength > MaxBodyBytes)
        {
            throw new AdminException(400, "invalid_argument", $"the body exceeds {MaxBodyBytes} bytes", "body");
        }
        using var buffer = new MemoryStream();
        var chunk = new byte[16 << 10];
        int n;
        while ((n = await http.Request.Body.ReadAsync(chunk, ct)) > 0)
        {
            if (buffer.Length + n > MaxBodyBytes)
            {
                throw new AdminException(400, "invalid_argument", $"the body exceeds {MaxBodyBytes} bytes", "body");
            }
            buffer.Write(chunk, 0, n);
        }
        try
        {
            return JsonSerializer.Deserialize<T>(buffer.GetBuffer().AsSpan(0, (int)buffer.Length), Json)
                ?? throw new AdminException(400, "invalid_argument", "the body is JSON null", "body");
        }
        catch (JsonException ex)
        {
            string field = string.IsNullOrEmpty(ex.Path) || ex.Path == "$" ? "body" : ex.Path.TrimStart('$', '.');
            throw new AdminException(400, "invalid_argument", $"the body is not a valid {typeof(T).Name}: {ex.Message}", field, ex);
        }
    }

    private sealed class LocationResult(IResult inner, string location) : IResult
    {
        public Task ExecuteAsync(HttpContext httpContext)
        {
            httpContext.Response.Headers.Location = location;
            return inner.ExecuteAsync(httpContext);
        }
    }

    [LoggerMessage(EventId = 3200, Level = LogLevel.Warning, Message = "Admin call {Method} {Path} from {RemoteAddress} refused: {Reason}")]
    private static partial void LogRefused(ILogger logger, string method, string path, string remoteAddress, string reason);
}
