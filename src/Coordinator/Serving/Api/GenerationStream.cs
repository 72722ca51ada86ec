using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>One step of a response: new text and the token ids that produced it; <see cref="Finish"/> on the last step.</summary>
/// <param name="Text">Text safe to send (complete characters, stop sequences removed); may be empty.</param>
/// <param name="TokenIds">Generated ids consumed by this step (the step that completes a stop match includes its token).</param>
/// <param name="Finish">OpenAI finish reason (<c>stop</c> or <c>length</c>) on the last step, else null.</param>
public readonly record struct GenerationDelta(string Text, int[] TokenIds, string? Finish);

/// <summary>
/// Runs one request against an <see cref="IGenerationScheduler"/> and turns its token stream into text deltas:
/// UTF-8-safe streaming decoding (special tokens produce no text), text-level stop sequences across token boundaries,
/// and OpenAI finish reasons. When a stop sequence ends the text early the sequence is cancelled in the scheduler, so
/// it leaves the batch at once. Not thread-safe.
/// </summary>
public sealed class GenerationStream : IAsyncDisposable
{
    private readonly IAsyncEnumerator<GeneratedToken> _tokens;
    private readonly CancellationTokenSource _cts;
    private readonly Llama4StreamingDecoder _decoder;
    private readonly StopSequenceMatcher _stop;
    private bool _hasCurrent;
    private bool _finished;

    private GenerationStream(IAsyncEnumerator<GeneratedToken> tokens, CancellationTokenSource cts, Llama4StreamingDecoder decoder, StopSequenceMatcher stop)
    {
        _tokens = tokens;
        _cts = cts;
        _decoder = decoder;
        _stop = stop;
    }

    /// <summary>Prompt length in tokens.</summary>
    public int PromptTokens { get; private init; }

    /// <summary>Tokens generated so far (a final EOS or stop token included).</summary>
    public int CompletionTokens { get; private set; }

    /// <summary>
    /// Submits <paramref name="request"/> and waits for its first token, so admission failures surface here, before any
    /// response byte is sent.
    /// </summary>
    /// <exception cref="QueueFullException">The scheduler's queue is full.</exception>
    /// <exception cref="RequestTooLargeException">The request can never fit.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    /// <exception cref="InvalidOperationException">The scheduler ended the stream without a token.</exception>
    public static async Task<GenerationStream> StartAsync(
        IGenerationScheduler scheduler, GenerationRequest request, Llama4Tokenizer tokenizer, IReadOnlyList<string> stop, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(tokenizer);
        var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        IAsyncEnumerator<GeneratedToken>? tokens = null;
        try
        {
            tokens = scheduler.GenerateAsync(request, cts.Token).GetAsyncEnumerator(cts.Token);
            var stream = new GenerationStream(tokens, cts, tokenizer.CreateStreamingDecoder(skipSpecialTokens: true), new StopSequenceMatcher(stop))
            {
                PromptTokens = request.PromptIds.Length,
            };
            if (!await tokens.MoveNextAsync().ConfigureAwait(false))
            {
                throw new InvalidOperationException($"the scheduler ended request {request.Id} without generating a token");
            }
            stream._hasCurrent = true;
            return stream;
        }
        catch
        {
            await cts.CancelAsync().ConfigureAwait(false);
            if (tokens is not null)
            {
                await tokens.DisposeAsync().ConfigureAwait(false);
            }
            cts.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The next delta, or null after the one carrying <see cref="GenerationDelta.Finish"/>. Each call consumes exactly
    /// one generated token.
    /// </summary>
    /// <exception cref="InvalidOperationException">The scheduler broke its contract (stream ended without a finish reason).</exception>
    public async ValueTask<GenerationDelta?> NextAsync()
    {
        if (_finished)
        {
            return null;
        }
        if (!_hasCurrent)
        {
            if (!await _tokens.MoveNextAsync().ConfigureAwait(false))
            {
                throw new InvalidOperationException("the scheduler ended a sequence without a finish reason");
            }
        }
        _hasCurrent = false;
        var token = _tokens.Current;
        CompletionTokens++;
        string text = _decoder.Append(token.TokenId);
        if (token.Finish is not null)
        {
            text += _decoder.Flush();
        }
        string emitted = _stop.Append(text);
        if (_stop.Stopped)
        {
            _finished = true;
            // Ends the sequence in the scheduler now: nothing after the stop text will be sent.
            await _cts.CancelAsync().ConfigureAwait(false);
            return new GenerationDelta(emitted, [token.TokenId], "stop");
        }
        if (token.Finish is { } finish)
        {
            _finished = true;
            return new GenerationDelta(emitted + _stop.Flush(), [token.TokenId], finish == FinishReason.Stop ? "stop" : "length");
        }
        return new GenerationDelta(emitted, [token.TokenId], null);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (!_finished)
        {
            await _cts.CancelAsync().ConfigureAwait(false);
        }
        try
        {
            await _tokens.DisposeAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The sequence was cancelled on purpose; its iterator may observe that while unwinding.
        }
        _cts.Dispose();
    }
}
