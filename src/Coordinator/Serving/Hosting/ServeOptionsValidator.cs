using System.Net;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Serving.Hosting;

/// <summary>Checks every <see cref="ServeOptions"/> field; each failure names the option.</summary>
public sealed class ServeOptionsValidator : IValidateOptions<ServeOptions>
{
    /// <summary>Smallest accepted <see cref="ServeOptions.MaxRequestBodyBytes"/> (1 KiB).</summary>
    public const long MinRequestBodyBytes = 1024;

    /// <summary>Largest accepted <see cref="ServeOptions.MaxRequestBodyBytes"/> (1 GiB).</summary>
    public const long MaxRequestBodyBytes = 1L << 30;

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, ServeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ModelDirectory))
        {
            failures.Add("ModelDirectory (--model) is required.");
        }
        else if (!Directory.Exists(options.ModelDirectory))
        {
            failures.Add($"ModelDirectory (--model): directory '{options.ModelDirectory}' does not exist.");
        }
        if (options.ModelName is { } modelName && (modelName.Length == 0 || modelName.Length > 256 || modelName.Any(c => char.IsWhiteSpace(c) || char.IsControl(c))))
        {
            failures.Add($"ModelName (--model-name) must be 1-256 characters without whitespace, got '{modelName}'.");
        }
        if (!TryParseHost(options.Host, out var address))
        {
            failures.Add($"Host (--host) must be an IP address or 'localhost', got '{options.Host}'.");
        }
        string? apiKey = options.ResolveApiKey();
        if (apiKey is not null && (apiKey.Length is < ServeOptions.MinApiKeyLength or > 4096 || apiKey.Any(char.IsWhiteSpace)))
        {
            failures.Add($"ApiKey ({options.ApiKeyEnvironmentVariable}) must be {ServeOptions.MinApiKeyLength} to 4096 characters without whitespace.");
        }
        else if (apiKey is null && !options.AllowUnauthenticated && !address.Equals(IPAddress.None) && !IPAddress.IsLoopback(address))
        {
            failures.Add($"Host (--host) {options.Host} is not a loopback address: set an API key ({options.ApiKeyEnvironmentVariable} or Serve:ApiKey), "
                + "or pass --allow-unauthenticated (Serve:AllowUnauthenticated) when something in front of serve authenticates its callers.");
        }
        if (options.Port is < 0 or > 65535)
        {
            failures.Add($"Port (--port) must be in [0, 65535], got {options.Port}.");
        }
        if (options.Http2Port is < 0 or > 65535)
        {
            failures.Add($"Http2Port (--http2-port) must be in [0, 65535], got {options.Http2Port}.");
        }
        else if (options.Http2Port is int h2 && h2 != 0 && h2 == options.Port)
        {
            failures.Add($"Http2Port (--http2-port) must differ from Port (--port), both are {h2}.");
        }
        if (options.MaxRequestBodyBytes is < MinRequestBodyBytes or > MaxRequestBodyBytes)
        {
            failures.Add($"MaxRequestBodyBytes (--max-request-bytes) must be in [{MinRequestBodyBytes}, {MaxRequestBodyBytes}], got {options.MaxRequestBodyBytes}.");
        }
        if (options.QueueFullStatusCode is not (429 or 503))
        {
            failures.Add($"QueueFullStatusCode (--queue-full-status) must be 429 or 503, got {options.QueueFullStatusCode}.");
        }
        if (options.DefaultMaxTokens < 1)
        {
            failures.Add($"DefaultMaxTokens (--default-max-tokens) must be >= 1, got {options.DefaultMaxTokens}.");
        }
        if (options.ShutdownTimeout < TimeSpan.Zero || options.ShutdownTimeout > TimeSpan.FromHours(1))
        {
            failures.Add($"ShutdownTimeout must be between 0 and 1 hour, got {options.ShutdownTimeout}.");
        }
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>Parses <see cref="ServeOptions.Host"/>: an IP address, or <c>localhost</c> as the IPv4 loopback.</summary>
    public static bool TryParseHost(string? host, out IPAddress address)
    {
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            address = IPAddress.Loopback;
            return true;
        }
        if (host is not null && IPAddress.TryParse(host, out var parsed))
        {
            address = parsed;
            return true;
        }
        address = IPAddress.None;
        return false;
    }
}
