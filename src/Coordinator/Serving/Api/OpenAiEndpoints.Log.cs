namespace Distributed.Coordinator.Serving.Api;

/// <summary>Event ids of the serving API (range 4100-4199; issue #4).</summary>
public static class ServingApiEvents
{
    /// <summary>A request finished (Information, once per request).</summary>
    public const int RequestCompleted = 4100;

    /// <summary>A request was refused because the queue is full.</summary>
    public const int QueueFull = 4101;

    /// <summary>A stream failed after its headers were sent.</summary>
    public const int StreamFailed = 4102;

    /// <summary>An unhandled exception became a 500.</summary>
    public const int UnhandledException = 4103;

    /// <summary>The client went away before the response was complete.</summary>
    public const int ClientDisconnected = 4104;

    /// <summary>An image part was refused (bad, oversized, unsupported or not allowed); the request got a 400.</summary>
    public const int ImageRejected = 4105;
}

public sealed partial class OpenAiEndpoints
{
    [LoggerMessage(EventId = ServingApiEvents.RequestCompleted, Level = LogLevel.Information,
        Message = "request {RequestId} done: {PromptTokens} prompt + {CompletionTokens} completion tokens, stream={Stream}, {ElapsedMs:F1} ms")]
    private partial void LogCompleted(string requestId, int promptTokens, int completionTokens, bool stream, double elapsedMs);

    [LoggerMessage(EventId = ServingApiEvents.QueueFull, Level = LogLevel.Warning, Message = "request {RequestId} refused: queue full (retry after {RetryAfterSeconds:F1} s)")]
    private partial void LogQueueFull(string requestId, double retryAfterSeconds);

    [LoggerMessage(EventId = ServingApiEvents.StreamFailed, Level = LogLevel.Error, Message = "request {RequestId}: generation failed after the stream started")]
    private partial void LogStreamFailed(Exception exception, string requestId);

    [LoggerMessage(EventId = ServingApiEvents.ImageRejected, Level = LogLevel.Information, Message = "image part {Field} refused: {Reason}")]
    private partial void LogImageRejected(string field, string reason);
}
