using Distributed.Coordinator.Serving.Api;
using Distributed.Coordinator.Serving.Tokenization;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging.Console;
using Distributed.Coordinator.Hosting;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Serving.Hosting;

/// <summary>
/// Builds the serving web host: Kestrel on <see cref="ServeOptions.Host"/>:<see cref="ServeOptions.Port"/> speaking
/// HTTP/1.1, optionally a second port for cleartext HTTP/2 (<see cref="ServeOptions.Http2Port"/>), the request-body limit, the OpenAI endpoints over one
/// model (<see cref="ServedModel"/>) behind the API key when one is configured (<see cref="ApiKeyMiddleware"/>), OpenAI error
/// objects for every failure (401/404/405 included), and console logs on stderr.
/// </summary>
public static class ServeHost
{
    /// <summary>Creates (but does not start) the web application.</summary>
    /// <param name="options">Validated with <see cref="ServeOptionsValidator"/>; invalid → <see cref="OptionsValidationException"/>.</param>
    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="createScheduler">
    /// Creates the scheduler once, from the host's services (for its logger). The host owns it: disposing the
    /// application disposes the scheduler (after the server has stopped) when it is disposable.
    /// </param>
    /// <param name="configureLogging">Replaces the default logging (<see cref="AddConsoleLogging"/>) when set.</param>
    /// <param name="operations">Metrics, health and traces (issue #6): <c>/metrics</c>, <c>/healthz/live</c>,
    /// <c>/healthz/ready</c> and a measuring wrapper around the scheduler; null = none of these.</param>
    /// <param name="configureServices">Adds services (e.g. the cluster admin API) before the host is built.</param>
    /// <param name="configureApp">Maps more endpoints (e.g. the cluster admin API) after the serving endpoints.</param>
    /// <param name="images">The image pipeline of a multimodal model (issue #13); null = image parts get a 400. The host does not own it.</param>
    /// <param name="scheduling">The scheduler's options, registered with <c>ValidateOnStart</c> beside <paramref name="options"/>; null = not registered.</param>
    /// <exception cref="OptionsValidationException">An option is invalid; the message names it.</exception>
    public static WebApplication Build(
        ServeOptions options, Llama4Tokenizer tokenizer, Func<IServiceProvider, IGenerationScheduler> createScheduler, Action<ILoggingBuilder>? configureLogging = null,
        Diagnostics.CoordinatorOperations? operations = null, Action<IServiceCollection>? configureServices = null, Action<WebApplication>? configureApp = null,
        Images.Llama4ImageInputs? images = null, Scheduling.SchedulerOptions? scheduling = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(createScheduler);
        var validation = new ServeOptionsValidator().Validate(null, options);
        if (validation.Failed)
        {
            throw new OptionsValidationException(nameof(ServeOptions), typeof(ServeOptions), validation.Failures);
        }
        ServeOptionsValidator.TryParseHost(options.Host, out var address);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.Logging.ClearProviders();
        (configureLogging ?? AddConsoleLogging)(builder.Logging);

        var endpoints = new ServeEndpoints();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.Listen(address, options.Port, listen =>
            {
                listen.Protocols = HttpProtocols.Http1;
                endpoints.Http1 = listen;
            });
            if (options.Http2Port is int h2)
            {
                k.Listen(address, h2, listen =>
                {
                    listen.Protocols = HttpProtocols.Http2;
                    endpoints.Http2 = listen;
                });
            }
        });
        builder.Services.AddSingleton(endpoints);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownTimeout);
        builder.Services.AddServing(options, scheduling, tokenizer, createScheduler, operations, images);
        operations?.AddTo(builder);
        configureServices?.Invoke(builder.Services);

        var app = builder.Build();
        app.UseMiddleware<ApiErrorMiddleware>();
        if (options.ResolveApiKey() is { } apiKey)
        {
            app.UseMiddleware<ApiKeyMiddleware>(new Distributed.Hosting.BearerTokenAuthenticator(apiKey));
        }
        app.UseExpertCluster();
        app.UseStatusCodePages(context => ApiErrorMiddleware.WriteStatusCodeErrorAsync(context.HttpContext));
        app.Services.GetRequiredService<OpenAiEndpoints>().Map(app);
        operations?.MapEndpoints(app);
        configureApp?.Invoke(app);
        return app;
    }

    /// <summary>
    /// The serve command's logging: one line per entry, timestamped, no colours, everything on stderr (stdout carries
    /// only the <c>listening on</c> line); Information and above, ASP.NET Core's own chatter from Warning.
    /// </summary>
    public static void AddConsoleLogging(ILoggingBuilder logging)
    {
        ArgumentNullException.ThrowIfNull(logging);
        logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.ColorBehavior = LoggerColorBehavior.Disabled;
        });
        logging.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        logging.SetMinimumLevel(LogLevel.Information);
        logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        // "Not ready yet" is the readiness probe's answer, not an error line in the log.
        logging.AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", LogLevel.Critical);
    }

    /// <summary>The bound HTTP/1.1 base address of a started host, e.g. <c>http://127.0.0.1:8000</c>.</summary>
    /// <exception cref="InvalidOperationException">The host has not started.</exception>
    public static string ListeningAddress(WebApplication app) => Address(app, http2: false)
        ?? throw new InvalidOperationException("the server has no bound address (not started?)");

    /// <summary>The bound cleartext HTTP/2 base address of a started host, or null when <see cref="ServeOptions.Http2Port"/> is not set.</summary>
    public static string? Http2ListeningAddress(WebApplication app) => Address(app, http2: true);

    private static string? Address(WebApplication app, bool http2)
    {
        ArgumentNullException.ThrowIfNull(app);
        var endpoints = app.Services.GetRequiredService<ServeEndpoints>();
        var listen = http2 ? endpoints.Http2 : endpoints.Http1;
        // Kestrel writes the bound endpoint (the real port when 0 was asked for) back into the ListenOptions.
        return listen?.IPEndPoint is { Port: > 0 } ep ? $"http://{FormatHost(ep.Address)}:{ep.Port}" : null;
    }

    private static string FormatHost(System.Net.IPAddress address) =>
        address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();

    private sealed class ServeEndpoints
    {
        public ListenOptions? Http1 { get; set; }

        public ListenOptions? Http2 { get; set; }
    }
}
