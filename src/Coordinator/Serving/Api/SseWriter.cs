using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// Writes server-sent events the way OpenAI streams do: each event is one line <c>data: {json}</c> followed by a blank
/// line (<c>\n\n</c>), flushed at once so the client sees every token as it is produced; the stream ends with
/// <c>data: [DONE]\n\n</c>. The JSON is written compact (no newline inside an event). Not thread-safe.
/// </summary>
public sealed class SseWriter : IDisposable
{
    private readonly PipeWriter _output;
    private readonly Utf8JsonWriter _json;

    /// <summary>Writes events to <paramref name="output"/> (for HTTP, the response's <c>BodyWriter</c>).</summary>
    public SseWriter(PipeWriter output)
    {
        _output = output ?? throw new ArgumentNullException(nameof(output));
        _json = new Utf8JsonWriter(output, ApiErrorJson.WriterOptions);
    }

    /// <summary>Events written so far (the <c>[DONE]</c> marker included).</summary>
    public int EventCount { get; private set; }

    /// <summary>Writes one <c>data: {json}\n\n</c> event, where <paramref name="writeJson"/> writes exactly one JSON value, and flushes.</summary>
    public async ValueTask WriteEventAsync(Action<Utf8JsonWriter> writeJson, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(writeJson);
        _output.Write("data: "u8);
        _json.Reset(_output);
        writeJson(_json);
        _json.Flush();
        _output.Write("\n\n"u8);
        EventCount++;
        await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Writes the terminating <c>data: [DONE]\n\n</c> event and flushes.</summary>
    public async ValueTask WriteDoneAsync(CancellationToken cancellationToken)
    {
        _output.Write("data: [DONE]\n\n"u8);
        EventCount++;
        await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public void Dispose() => _json.Dispose();

    private async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        var result = await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (result.IsCanceled)
        {
            throw new OperationCanceledException("the SSE flush was cancelled", cancellationToken);
        }
    }
}
