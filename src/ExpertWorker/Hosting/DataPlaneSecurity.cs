using System.Buffers;
using System.Globalization;
using System.Net;
using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Services;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// What guards the worker's data-plane listeners (the gRPC port and the optional Unix socket; not the HTTP/1.1
/// operations port): the cluster credential, checked on every request before anything else is read; refusal of
/// compressed messages; frame-by-frame checks of every request body (<see cref="GrpcFrameGuardReader"/>); the
/// handshake sessions and the shared-ring rendezvous. One rate-limited log line per kind of refusal
/// (<see cref="DataPlaneRejections"/>).
/// </summary>
public static partial class DataPlaneSecurity
{
    /// <summary>Largest message of a control call (Hello, the health service), bytes.</summary>
    public const int ControlMessageBytes = 64 << 10;

    /// <summary>How long a Hello's rendezvous nonce stays good.</summary>
    public static readonly TimeSpan RendezvousLifetime = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The credential this worker requires (<see cref="ClusterToken.Resolve"/>), or null when it runs without one
    /// (<see cref="ExpertWorkerOptions.AllowUnauthenticated"/> on loopback).
    /// </summary>
    /// <exception cref="OptionsValidationException">No token and no permission to run without one, a weak token, or
    /// <see cref="ExpertWorkerOptions.AllowUnauthenticated"/> off loopback (every reason listed; the token never is).</exception>
    public static ClusterToken? ResolveCredential(IConfiguration configuration, ExpertWorkerOptions options)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentNullException.ThrowIfNull(options);
        var (token, previous) = ClusterToken.Resolve(key => configuration[key]);
        var failures = new List<string>();
        if (token is null)
        {
            if (previous is not null)
            {
                failures.Add($"{ClusterToken.PreviousConfigurationKey} is set but {ClusterToken.ConfigurationKey} is not");
            }
            else if (!options.AllowUnauthenticated)
            {
                failures.Add($"the data plane needs the cluster credential: set {ClusterToken.EnvironmentVariable} (or {ClusterToken.ConfigurationKey}) "
                    + $"to at least {ClusterToken.MinLength} random characters, e.g. `openssl rand -base64 32`; "
                    + "ExpertWorker:AllowUnauthenticated=true runs without one, on loopback only, for development");
            }
            else if (!IPAddress.TryParse(options.GrpcHost, out var address) || !IPAddress.IsLoopback(address))
            {
                failures.Add($"ExpertWorker:AllowUnauthenticated is for loopback only, but ExpertWorker:GrpcHost is '{options.GrpcHost}': set {ClusterToken.EnvironmentVariable}");
            }
        }
        else
        {
            failures.AddRange(ClusterToken.Validate(token, ClusterToken.ConfigurationKey));
            if (previous is not null)
            {
                failures.AddRange(ClusterToken.Validate(previous, ClusterToken.PreviousConfigurationKey));
            }
        }
        if (failures.Count > 0)
        {
            throw new OptionsValidationException(ExpertClusterOptions.SectionName, typeof(ClusterToken), failures);
        }
        return token is null ? null : ClusterToken.Create(token, previous);
    }

    /// <summary>Registers the guard, the sessions, the rendezvous and the refusal log.</summary>
    /// <param name="builder">The worker's web host builder.</param>
    /// <param name="options">The worker's options.</param>
    /// <param name="credential">Required on every data-plane call; null = none (development).</param>
    /// <param name="maxMessageBytes">Largest data-plane message (the <c>Dispatch</c>/<c>DispatchOnce</c> frames).</param>
    /// <param name="isOperations">True for a request on the operations listener, which the guard leaves alone.</param>
    public static void Add(WebApplicationBuilder builder, ExpertWorkerOptions options, ClusterToken? credential, int maxMessageBytes,
        Func<HttpContext, bool> isOperations)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(options);
        var services = builder.Services;
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<DataPlaneRejections>();
        services.AddSingleton(sp => new SessionRegistry(options.MaxSessions, options.SessionIdleGrace, sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton<SharedRingRendezvousService>();
        services.AddHostedService(sp => sp.GetRequiredService<SharedRingRendezvousService>());
        services.AddSingleton(new DataPlaneGuard(credential, maxMessageBytes, isOperations));
    }

    /// <summary>Puts the guard in front of every endpoint (after routing, so it knows the gRPC method; before any body
    /// is read) and logs the data plane's security settings once.</summary>
    public static void Use(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseMiddleware<DataPlaneGuardMiddleware>();
        var guard = app.Services.GetRequiredService<DataPlaneGuard>();
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(DataPlaneSecurity));
        if (guard.Credential is { } credential)
        {
            LogCredential(logger, credential.ToString());
        }
        else
        {
            LogUnauthenticated(logger);
        }
    }

    [LoggerMessage(EventId = LogEvents.DataPlaneSecurity, Level = LogLevel.Information,
        Message = "Data plane: every call needs the {Credential} (authorization: Bearer)")]
    private static partial void LogCredential(ILogger logger, string credential);

    [LoggerMessage(EventId = LogEvents.DataPlaneSecurity + 1, Level = LogLevel.Warning,
        Message = "Data plane: NO cluster credential (ExpertWorker:AllowUnauthenticated): any local process can use this worker; set DISTRIBUTED_CLUSTER_TOKEN outside development")]
    private static partial void LogUnauthenticated(ILogger logger);
}

/// <summary>The guard's settings (a singleton).</summary>
public sealed class DataPlaneGuard(ClusterToken? credential, int maxMessageBytes, Func<HttpContext, bool> isOperations)
{
    private static readonly Dictionary<string, Func<ReadOnlySequence<byte>, string?>> Checks = new(StringComparer.Ordinal)
    {
        ["/" + ExpertWorkerMethods.ServiceName + "/Hello"] = ParsesAs(HelloRequest.Parser),
        ["/grpc.health.v1.Health/Check"] = ParsesAs(HealthCheckRequest.Parser),
        ["/grpc.health.v1.Health/Watch"] = ParsesAs(HealthCheckRequest.Parser),
    };

    /// <summary>Required on every call; null = none.</summary>
    public ClusterToken? Credential { get; } = credential;

    /// <summary>Largest <c>Dispatch</c>/<c>DispatchOnce</c> message.</summary>
    public int MaxMessageBytes { get; } = maxMessageBytes;

    /// <summary>True for requests the guard leaves alone (the operations listener).</summary>
    public bool IsOperations(HttpContext context) => isOperations(context);

    /// <summary>The size limit of one message of <paramref name="method"/>.</summary>
    public long LimitOf(IMethod method)
        => method.ServiceName == ExpertWorkerMethods.ServiceName && method.Name != ExpertWorkerMethods.Hello.Name ? MaxMessageBytes : DataPlaneSecurity.ControlMessageBytes;

    /// <summary>A parse check for the messages of <paramref name="path"/> whose marshaller would throw on bad bytes, or null.</summary>
    public static Func<ReadOnlySequence<byte>, string?>? CheckOf(string path) => Checks.GetValueOrDefault(path);

    private static Func<ReadOnlySequence<byte>, string?> ParsesAs<T>(MessageParser<T> parser)
        where T : IMessage<T>
        => bytes =>
        {
            try
            {
                parser.ParseFrom(bytes);
                return null;
            }
            catch (InvalidProtocolBufferException ex)
            {
                return $"malformed {typeof(T).Name}: {ex.Message}";
            }
        };
}

/// <summary>
/// The guard itself (see <see cref="DataPlaneSecurity"/>). A refusal is a trailers-only gRPC response
/// (<c>grpc-status</c> in the headers, no body) or, for a non-gRPC request, HTTP 401/400; the request body is never read.
/// </summary>
internal sealed class DataPlaneGuardMiddleware(RequestDelegate next, DataPlaneGuard guard, DataPlaneRejections rejections)
{
    public Task InvokeAsync(HttpContext context)
    {
        if (guard.IsOperations(context))
        {
            return next(context);
        }
        if (guard.Credential is { } credential && !credential.Verify(context.Request.Headers.Authorization))
        {
            string presented = context.Request.Headers.Authorization.Count == 0 ? "no credential" : "a wrong credential";
            rejections.Report(RejectionKind.Unauthenticated, StatusCode.Unauthenticated, $"{presented} for {Describe(context)}");
            return Refuse(context, StatusCode.Unauthenticated, StatusCodes.Status401Unauthorized,
                "missing or wrong cluster credential (authorization: Bearer <DISTRIBUTED_CLUSTER_TOKEN>)");
        }
        string? encoding = context.Request.Headers["grpc-encoding"];
        if (!string.IsNullOrEmpty(encoding) && encoding != "identity")
        {
            string reason = $"grpc-encoding '{DataPlaneRejections.Printable(encoding)}': the data plane accepts no compression";
            rejections.Report(RejectionKind.MalformedFrame, StatusCode.InvalidArgument, $"{reason} ({Describe(context)})");
            return Refuse(context, StatusCode.InvalidArgument, StatusCodes.Status400BadRequest, reason);
        }
        if (context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>()?.Method is { } method)
        {
            var body = new GrpcFrameGuardReader(context.Request.BodyReader, guard.LimitOf(method),
                method.Type is MethodType.Unary or MethodType.ServerStreaming, DataPlaneGuard.CheckOf(context.Request.Path.Value ?? ""), rejections);
            context.Features.Set<IRequestBodyPipeFeature>(new GuardedBody(body));
        }
        return next(context);
    }

    private static Task Refuse(HttpContext context, StatusCode code, int httpStatus, string message)
    {
        if (context.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
        {
            // Trailers-only response: status in the headers, END_STREAM, nothing of the request read.
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/grpc";
            context.Response.Headers["grpc-status"] = ((int)code).ToString(CultureInfo.InvariantCulture);
            context.Response.Headers["grpc-message"] = message;
        }
        else
        {
            context.Response.StatusCode = httpStatus;
            if (code == StatusCode.Unauthenticated)
            {
                context.Response.Headers.WWWAuthenticate = "Bearer";
            }
        }
        return Task.CompletedTask;
    }

    private static string Describe(HttpContext context)
        => $"{DataPlaneRejections.Printable(context.Request.Path.Value ?? "")} from {context.Connection.RemoteIpAddress?.ToString() ?? "the unix socket"}";

    private sealed class GuardedBody(GrpcFrameGuardReader reader) : IRequestBodyPipeFeature
    {
        public System.IO.Pipelines.PipeReader Reader => reader;
    }
}
