using Distributed.Coordinator.Serving.Api;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Serving.Hosting;

/// <summary>
/// Builds the serving web host: Kestrel on <see cref="ServeOptions.Host"/>:<see cref="ServeOptions.Port"/> speaking
/// HTTP/1.1 and cleartext HTTP/2 (prior knowledge), the request-body limit, the OpenAI endpoints over one
/// <see cref="ServedModel"/>, OpenAI error objects for every failure (404/405 included), and console logs on stderr.
/// </summary>
public static class ServeHost
{
    /// <summary>Creates (but does not start) the web application.</summary>
    /// <param name="options">Validated with <see cref="ServeOptionsValidator"/>; invalid → <see cref="OptionsValidationException"/>.</param>
    /// <param name="model">The model, tokenizer and scheduler to serve (not disposed by the host).</param>
    /// <param name="configureLogging">Replaces the default logging (simple console on stderr) when set.</param>
    /// <exception cref="OptionsValidationException">An option is invalid; the message names it.</exception>
    public static WebApplication Build(ServeOptions options, ServedModel model, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(model);
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
        if (configureLogging is not null)
        {
            configureLogging(builder.Logging);
        }
        else
        {
            builder.Logging.AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss.fff ";
                o.ColorBehavior = LoggerColorBehavior.Disabled;
            });
            builder.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
            builder.Logging.SetMinimumLevel(LogLevel.Information);
            builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
            builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        }

        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.Listen(address, options.Port, listen => listen.Protocols = HttpProtocols.Http1AndHttp2);
        });
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownTimeout);
        builder.Services.AddOptions<ServeOptions>()
            .Configure(o => Copy(options, o))
            .ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<ServeOptions>, ServeOptionsValidator>();
        builder.Services.AddSingleton(model);
        builder.Services.AddSingleton(new OpenAiApiSettings(options.QueueFullStatusCode));
        builder.Services.AddSingleton<OpenAiEndpoints>();

        var app = builder.Build();
        app.UseMiddleware<ApiErrorMiddleware>();
        app.UseStatusCodePages(context => ApiErrorMiddleware.WriteStatusCodeErrorAsync(context.HttpContext));
        app.Services.GetRequiredService<OpenAiEndpoints>().Map(app);
        return app;
    }

    /// <summary>The bound base address of a started host, e.g. <c>http://127.0.0.1:8000</c>.</summary>
    /// <exception cref="InvalidOperationException">The host has not started.</exception>
    public static string ListeningAddress(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses;
        return addresses?.FirstOrDefault() ?? throw new InvalidOperationException("the server has no bound address (not started?)");
    }

    private static void Copy(ServeOptions from, ServeOptions to)
    {
        to.ModelDirectory = from.ModelDirectory;
        to.ModelName = from.ModelName;
        to.Host = from.Host;
        to.Port = from.Port;
        to.MaxRequestBodyBytes = from.MaxRequestBodyBytes;
        to.QueueFullStatusCode = from.QueueFullStatusCode;
        to.MaxQueue = from.MaxQueue;
        to.MaxBatchTokens = from.MaxBatchTokens;
        to.KvMemoryMb = from.KvMemoryMb;
        to.ShutdownTimeout = from.ShutdownTimeout;
    }
}
