namespace Distributed.Hosting;

/// <summary>
/// Metrics and traces of a coordinator or worker process. Section <c>Telemetry</c>; from the environment as
/// <c>DISTRIBUTED_Telemetry__OtlpEndpoint</c> and so on (the coordinator also honours the standard
/// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c>).
/// </summary>
public sealed class TelemetryOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Telemetry";

    /// <summary>Environment variable prefix both executables read configuration from.</summary>
    public const string EnvironmentPrefix = "DISTRIBUTED_";

    /// <summary>OTLP/gRPC collector endpoint for traces (e.g. <c>http://otel-collector:4317</c>); null or empty = no trace export. Default: null.</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary>Fraction of requests traced when exporting, in [0, 1]. Default: 1.</summary>
    public double TraceSampleRatio { get; set; } = 1.0;

    /// <summary>
    /// Largest number of (layer, expert) series of <c>moe_expert_routed_tokens_total</c>: with more layers × experts
    /// than this the counts are summed per worker instead. Default: 4096 (Maverick: 48 layers × 128 experts = 6144
    /// slots of which 24 × 128 = 3072 are MoE layers, all covered).
    /// </summary>
    public int MaxExpertSeries { get; set; } = 4096;

    /// <summary>Environment variable read for <see cref="MetricsToken"/> when that is not set.</summary>
    public const string MetricsTokenEnvironmentVariable = "DISTRIBUTED_METRICS_TOKEN";

    /// <summary>Shortest metrics token accepted.</summary>
    public const int MinMetricsTokenLength = 16;

    /// <summary>
    /// Bearer token a scraper must present for <c>/metrics</c> (Prometheus: <c>authorization: credentials</c>). Without
    /// one, <c>/metrics</c> answers callers on loopback only and refuses every other caller with 403: the per-expert
    /// load series describe the traffic, so they are not open to the network. Probes (<c>/healthz/*</c>) stay open.
    /// Default: none (then <see cref="MetricsTokenEnvironmentVariable"/> is read).
    /// </summary>
    public string? MetricsToken { get; set; }

    /// <summary>The configured metrics token (<see cref="MetricsToken"/>, else the environment variable), or null.</summary>
    public string? ResolveMetricsToken()
        => !string.IsNullOrEmpty(MetricsToken) ? MetricsToken
            : Environment.GetEnvironmentVariable(MetricsTokenEnvironmentVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null;

    /// <summary>Every problem with these options; each message names its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (!string.IsNullOrWhiteSpace(OtlpEndpoint)
            && (!Uri.TryCreate(OtlpEndpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https")))
        {
            errors.Add($"Telemetry:OtlpEndpoint '{OtlpEndpoint}' is not an absolute http(s) URL");
        }
        if (double.IsNaN(TraceSampleRatio) || TraceSampleRatio is < 0 or > 1)
        {
            errors.Add($"Telemetry:TraceSampleRatio {TraceSampleRatio} must be within [0, 1]");
        }
        if (ResolveMetricsToken() is { } token && (token.Length is < MinMetricsTokenLength or > 4096 || token.Any(char.IsWhiteSpace)))
        {
            errors.Add($"Telemetry:MetricsToken ({MetricsTokenEnvironmentVariable}) must be {MinMetricsTokenLength} to 4096 characters without whitespace");
        }
        if (MaxExpertSeries < 1)
        {
            errors.Add($"Telemetry:MaxExpertSeries {MaxExpertSeries} must be at least 1");
        }
        return errors;
    }
}
