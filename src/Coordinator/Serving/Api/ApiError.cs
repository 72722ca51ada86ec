using System.Text.Encodings.Web;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// A request the API refuses, carrying everything of the OpenAI-style error response:
/// <c>{"error":{"message","type","param","code"}}</c> with <see cref="StatusCode"/> and, for overload,
/// a <c>Retry-After</c> header.
/// </summary>
public sealed class ApiErrorException : Exception
{
    /// <summary>Creates the error.</summary>
    /// <param name="statusCode">HTTP status (400, 404, 413, 429, 503, ...).</param>
    /// <param name="type">OpenAI error type, e.g. <c>invalid_request_error</c>.</param>
    /// <param name="message">Human-readable reason naming the offending field.</param>
    /// <param name="param">The request field at fault (JSON path such as <c>messages[1].content</c>), or null.</param>
    /// <param name="code">Machine-readable code, or null.</param>
    /// <param name="retryAfter">Sent as <c>Retry-After</c> (whole seconds, rounded up, at least 1) when set.</param>
    public ApiErrorException(int statusCode, string type, string message, string? param = null, string? code = null, TimeSpan? retryAfter = null)
        : base(message)
    {
        StatusCode = statusCode;
        Type = type;
        Param = param;
        Code = code;
        RetryAfter = retryAfter;
    }

    /// <summary>HTTP status code.</summary>
    public int StatusCode { get; }

    /// <summary>OpenAI error type.</summary>
    public string Type { get; }

    /// <summary>Offending request field, or null.</summary>
    public string? Param { get; }

    /// <summary>Machine-readable error code, or null.</summary>
    public string? Code { get; }

    /// <summary>Suggested wait before retrying, or null.</summary>
    public TimeSpan? RetryAfter { get; }

    /// <summary>A 400 <c>invalid_request_error</c> about <paramref name="param"/>.</summary>
    public static ApiErrorException BadRequest(string message, string? param, string? code = null) =>
        new(400, ApiErrorTypes.InvalidRequest, message, param, code);
}

/// <summary>The <c>error.type</c> strings this API uses.</summary>
public static class ApiErrorTypes
{
    /// <summary>The request is malformed, out of range or refers to something unknown (400, 404, 405, 413).</summary>
    public const string InvalidRequest = "invalid_request_error";

    /// <summary>The server's queue is full (429).</summary>
    public const string RateLimit = "rate_limit_error";

    /// <summary>The server is overloaded (503).</summary>
    public const string ServiceUnavailable = "service_unavailable_error";

    /// <summary>A bug or an unexpected failure inside the server (500).</summary>
    public const string Server = "server_error";
}

/// <summary>Serializes OpenAI-style error objects.</summary>
public static class ApiErrorJson
{
    /// <summary>
    /// Writer settings of every API response: compact, UTF-8 text written as is (no <c>\u0027</c>-style escaping of
    /// quotes or non-ASCII; control characters and invalid text are still escaped), as OpenAI's responses are.
    /// </summary>
    public static JsonWriterOptions WriterOptions { get; } = new() { Indented = false, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Writes <c>{"error":{"message":..,"type":..,"param":..,"code":..}}</c> (null fields written as null).</summary>
    public static void Write(Utf8JsonWriter writer, ApiErrorException error)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(error);
        writer.WriteStartObject();
        writer.WriteStartObject("error");
        writer.WriteString("message", error.Message);
        writer.WriteString("type", error.Type);
        WriteNullable(writer, "param", error.Param);
        WriteNullable(writer, "code", error.Code);
        writer.WriteEndObject();
        writer.WriteEndObject();
    }

    /// <summary>The error object as UTF-8 JSON bytes.</summary>
    public static byte[] ToUtf8(ApiErrorException error)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            Write(writer, error);
        }
        return buffer.WrittenSpan.ToArray();
    }

    private static void WriteNullable(Utf8JsonWriter writer, string name, string? value)
    {
        if (value is null)
        {
            writer.WriteNull(name);
        }
        else
        {
            writer.WriteString(name, value);
        }
    }
}
