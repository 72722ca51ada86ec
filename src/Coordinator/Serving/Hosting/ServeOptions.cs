namespace Distributed.Coordinator.Serving.Hosting;

/// <summary>Settings of the <c>serve</c> command's HTTP server (the scheduler has its own <c>SchedulerOptions</c>).</summary>
public sealed class ServeOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Serve";

    /// <summary>Hugging Face model directory (config.json, safetensors, tokenizer.json). Required.</summary>
    public string ModelDirectory { get; set; } = string.Empty;

    /// <summary>Public model id (<c>/v1/models</c>, the requests' <c>model</c> field). Default: null = the directory's name.</summary>
    public string? ModelName { get; set; }

    /// <summary>IP address to listen on, or <c>localhost</c> (= 127.0.0.1). Default: <c>127.0.0.1</c>.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>TCP port, 0 = any free port (the bound one is logged). Default: 8000.</summary>
    public int Port { get; set; } = 8000;

    /// <summary>
    /// Extra port for cleartext HTTP/2 with prior knowledge (h2c), 0 = any free port, null = none. Kestrel cannot offer
    /// HTTP/2 beside HTTP/1.1 on one port without TLS, so the main <see cref="Port"/> speaks HTTP/1.1. Default: null.
    /// </summary>
    public int? Http2Port { get; set; }

    /// <summary>Largest accepted request body in bytes; larger bodies get 413. Default: 4 MiB (a 16k-token prompt as a JSON id array is about 100 KB).</summary>
    public long MaxRequestBodyBytes { get; set; } = 4L << 20;

    /// <summary>HTTP status when the scheduler's queue is full: 429 or 503, sent with Retry-After. Default: 429.</summary>
    public int QueueFullStatusCode { get; set; } = 429;

    /// <summary>Default of <see cref="DefaultMaxTokens"/>.</summary>
    public const int DefaultDefaultMaxTokens = 4096;

    /// <summary>
    /// A request without <c>max_tokens</c> may generate the rest of the context, but at most this many tokens per choice
    /// (<c>--default-max-tokens</c>). Default: 4096.
    /// </summary>
    public int DefaultMaxTokens { get; set; } = DefaultDefaultMaxTokens;

    /// <summary>Smallest accepted API key length (characters).</summary>
    public const int MinApiKeyLength = 16;

    /// <summary>
    /// The key every OpenAI API call (<c>/v1/*</c>, <c>/tokenize</c>, <c>/detokenize</c>) must present as
    /// <c>Authorization: Bearer KEY</c> (what the official clients send as their <c>apiKey</c>). Secret: never logged.
    /// Default: none (then <see cref="ApiKeyEnvironmentVariable"/> is read; with neither, the API is open, which only a
    /// loopback listener or <see cref="AllowUnauthenticated"/> permits).
    /// </summary>
    public string? ApiKey { get; set; }

    /// <summary>Environment variable holding the API key when <see cref="ApiKey"/> is not set (<c>--api-key-env</c>).
    /// Default: <c>DISTRIBUTED_API_KEY</c>.</summary>
    public string ApiKeyEnvironmentVariable { get; set; } = "DISTRIBUTED_API_KEY";

    /// <summary>
    /// Serve the OpenAI API without an API key on a non-loopback <see cref="Host"/> (<c>--allow-unauthenticated</c>; a
    /// warning is logged), e.g. behind a gateway that authenticates. Default: false (refused at start-up).
    /// </summary>
    public bool AllowUnauthenticated { get; set; }

    /// <summary>The configured API key (<see cref="ApiKey"/>, else the environment variable), or null.</summary>
    public string? ResolveApiKey()
        => !string.IsNullOrEmpty(ApiKey) ? ApiKey
            : string.IsNullOrWhiteSpace(ApiKeyEnvironmentVariable) ? null
            : Environment.GetEnvironmentVariable(ApiKeyEnvironmentVariable) is { Length: > 0 } key ? key : null;

    /// <summary>How long a shutdown waits for in-flight requests before cancelling them. Default: 10 s.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The model id to serve: <see cref="ModelName"/>, else the last segment of <see cref="ModelDirectory"/>.</summary>
    public string ResolveModelId() =>
        ModelName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(ModelDirectory)));
}
