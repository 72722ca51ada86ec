using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Admin;

/// <summary>Wiring of the cluster admin API into an ASP.NET Core host (the serve host, or its own listener).</summary>
public static class ClusterAdminHosting
{
    /// <summary>
    /// Registers the admin API: the token check (<see cref="ClusterAdminOptions.ResolveToken"/>), <see cref="ClusterAdmin"/>,
    /// gRPC and the OpenAPI document of the <c>/admin/v1</c> endpoints.
    /// </summary>
    /// <exception cref="OptionsValidationException">No token or an invalid setting (the token's value is never in the message).</exception>
    public static IServiceCollection AddClusterAdmin(this IServiceCollection services, ClusterAdminOptions options, Func<IServiceProvider, ClusterAdmin> createAdmin)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(createAdmin);
        var errors = options.Validate();
        if (errors.Count > 0)
        {
            throw new OptionsValidationException(ClusterAdminOptions.SectionName, typeof(ClusterAdminOptions), errors);
        }
        services.AddSingleton(new Distributed.Hosting.BearerTokenAuthenticator(options.ResolveToken()!));
        services.AddSingleton(createAdmin);
        services.AddGrpc(o => o.EnableDetailedErrors = false);
        services.AddOpenApi(AdminEndpoints.OpenApiDocument, o =>
        {
            o.ShouldInclude = d => d.RelativePath?.StartsWith("admin/v1/", StringComparison.Ordinal) == true;
            o.AddDocumentTransformer((doc, _, _) =>
            {
                doc.Info.Title = "Distributed cluster admin API";
                doc.Info.Version = "v1";
                doc.Info.Description = "Every call needs 'Authorization: Bearer <token>'. JSON names are snake_case. See docs/ADMIN-API.md.";
                return Task.CompletedTask;
            });
            o.AddSchemaTransformer((schema, _, _) =>
            {
                if (schema.Properties is { Count: > 0 } props)
                {
                    var renamed = props.ToDictionary(kv => JsonNamingPolicy.SnakeCaseLower.ConvertName(kv.Key), kv => kv.Value);
                    props.Clear();
                    foreach (var (k, v) in renamed)
                    {
                        props[k] = v;
                    }
                    if (schema.Required is { Count: > 0 } required)
                    {
                        var names = required.Select(JsonNamingPolicy.SnakeCaseLower.ConvertName).ToList();
                        required.Clear();
                        foreach (var n in names)
                        {
                            required.Add(n);
                        }
                    }
                }
                return Task.CompletedTask;
            });
        });
        return services;
    }

    /// <summary>Maps the REST endpoints under <c>/admin/v1</c>, the gRPC service, <c>/admin/v1/openapi.json</c> and the
    /// dashboard page at <c>/admin/dashboard</c>.</summary>
    public static WebApplication MapClusterAdmin(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapAdminEndpoints();
        app.MapGrpcService<AdminGrpcService>();
        app.MapOpenApi(AdminEndpoints.Prefix + "/{documentName}.json");
        Dashboard.AdminDashboard.MapAdminDashboard(app);
        return app;
    }

    /// <summary>
    /// A separate admin listener on <see cref="ClusterAdminOptions.Host"/>:<see cref="ClusterAdminOptions.Port"/> (HTTP/1.1:
    /// REST and the OpenAPI document) and, with <see cref="ClusterAdminOptions.GrpcPort"/>, a cleartext HTTP/2 listener
    /// for the gRPC service: created, not started.
    /// </summary>
    /// <exception cref="OptionsValidationException">No token, no host, or an invalid setting.</exception>
    public static WebApplication BuildHost(ClusterAdminOptions options, Func<IServiceProvider, ClusterAdmin> createAdmin, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Host is null)
        {
            throw new OptionsValidationException(ClusterAdminOptions.SectionName, typeof(ClusterAdminOptions), ["Admin:Host is required for a separate admin listener"]);
        }
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.Logging.ClearProviders();
        if (configureLogging is not null)
        {
            configureLogging(builder.Logging);
        }
        else
        {
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        }
        var listeners = new AdminListeners();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = AdminEndpoints.MaxBodyBytes;
            k.Listen(IPAddress.Parse(options.Host), options.Port, l =>
            {
                l.Protocols = HttpProtocols.Http1;
                listeners.Http = l;
            });
            if (options.GrpcPort is int grpc)
            {
                k.Listen(IPAddress.Parse(options.Host), grpc, l =>
                {
                    l.Protocols = HttpProtocols.Http2;
                    listeners.Grpc = l;
                });
            }
        });
        builder.Services.AddSingleton(listeners);
        builder.Services.AddClusterAdmin(options, createAdmin);
        var app = builder.Build();
        app.MapClusterAdmin();
        return app;
    }

    /// <summary>The bound REST base address of a started <see cref="BuildHost"/> host, e.g. <c>http://127.0.0.1:9000</c>.</summary>
    /// <exception cref="InvalidOperationException">Not started, or not built by <see cref="BuildHost"/>.</exception>
    public static string BoundAddress(WebApplication app) => Address(app, grpc: false)
        ?? throw new InvalidOperationException("the admin host has no bound address (not started?)");

    /// <summary>The bound gRPC (cleartext HTTP/2) base address of a started <see cref="BuildHost"/> host, or null without <see cref="ClusterAdminOptions.GrpcPort"/>.</summary>
    public static string? BoundGrpcAddress(WebApplication app) => Address(app, grpc: true);

    private static string? Address(WebApplication app, bool grpc)
    {
        ArgumentNullException.ThrowIfNull(app);
        var listeners = app.Services.GetRequiredService<AdminListeners>();
        var listen = grpc ? listeners.Grpc : listeners.Http;
        return listen?.IPEndPoint is { Port: > 0 } ep
            ? $"http://{(ep.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ep.Address}]" : ep.Address.ToString())}:{ep.Port}"
            : null;
    }

    private sealed class AdminListeners
    {
        public ListenOptions? Http { get; set; }

        public ListenOptions? Grpc { get; set; }
    }
}
