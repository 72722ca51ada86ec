using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>One step of a response: one generated token of one choice, the text it completed and its logprobs.</summary>
/// <param name="Text">Text safe to send (complete characters, stop sequences removed); may be empty.</param>
/// <param name="TokenIds">Generated ids consumed by this step (the step that completes a stop match includes its token).</param>
/// <param name="Finish">OpenAI finish reason (<c>stop</c> or <c>length</c>) on the choice's last step, else null.</param>
/// <param name="Choice">The choice (0 ≤ index &lt; n).</param>
/// <param name="Logprobs">The token's logprobs when the request asked for them.</param>
public readonly record struct GenerationDelta(string Text, int[] TokenIds, string? Finish, int Choice = 0, TokenLogprobs? Logprobs = null);

/// <summary>
/// Runs one request against an <see cref="IGenerationScheduler"/> and turns its token stream (every choice's, interleaved)
/// into text deltas per choice: UTF-8-safe streaming decoding (special tokens produce no text), text-level stop
/// sequences across token boundaries (not matched before the choice has <see cref="SamplingParams.MinTokens"/> tokens,
/// as vLLM does), and OpenAI finish reasons. When a stop sequence ends a choice early it is cancelled in the scheduler
/// (<see cref="ChoiceCancellation"/>), so it leaves the batch at once. Not thread-safe.
/// </summary>
public sealed class GenerationStream : IAsyncDisposable
{
    private readonly IAsyncEnumerator<GeneratedToken> _tokens;
    private readonly CancellationTokenSource _cts;
    private readonly ChoiceState[] _choices;
    private readonly ChoiceCancellation? _choiceCancellation;
    private readonly int _minTokens;
    private bool _hasCurrent;
    private int _open;

    private GenerationStream(IAsyncEnumerator<GeneratedToken> tokens, CancellationTokenSource cts, ChoiceState[] choices, ChoiceCancellation? choiceCancellation, int minTokens)
    {
        _tokens = tokens;
        _cts = cts;
        _choices = choices;
        _choiceCancellation = choiceCancellation;
        _minTokens = minTokens;
        _open = choices.Length;
    }

    /// <summary>Prompt length in tokens.</summary>
    public int PromptTokens { get; private init; }

    /// <summary>Tokens generated so far over every choice (a final EOS or stop token included).</summary>
    public int CompletionTokens => _choices.Sum(c => c.Tokens);

    /// <summary>
    /// Submits <paramref name="request"/> and waits for its first token, so admission failures surface here, before any
    /// response byte is sent. A request with <see cref="GenerationRequest.N"/> &gt; 1 should carry a
    /// <see cref="GenerationRequest.ChoiceCancellation"/> so a stop sequence ends only its choice (without one, the stream
    /// makes one).
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
        if (request.N > 1 && request.ChoiceCancellation is null)
        {
            request = request with { ChoiceCancellation = new ChoiceCancellation(request.N) };
        }
        var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        IAsyncEnumerator<GeneratedToken>? tokens = null;
        try
        {
            tokens = scheduler.GenerateAsync(request, cts.Token).GetAsyncEnumerator(cts.Token);
            var choices = Enumerable.Range(0, Math.Max(1, request.N))
                .Select(_ => new ChoiceState(tokenizer.CreateStreamingDecoder(skipSpecialTokens: true), new StopSequenceMatcher(stop))).ToArray();
            var stream = new GenerationStream(tokens, cts, choices, request.ChoiceCancellation, request.Sampling.MinTokens)
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
    /// The next delta, or null once every choice has had the delta carrying its <see cref="GenerationDelta.Finish"/>.
    /// Each delta consumes exactly one generated token.
    /// </summary>
    /// <exception cref="InvalidOperationException">The scheduler broke its contract (stream ended with a choice unfinished).</exception>
    public async ValueTask<GenerationDelta?> NextAsync()
    {
        while (_open > 0)
        {
            if (!_hasCurrent && !await _tokens.MoveNextAsync().ConfigureAwait(false))
            {
                throw new InvalidOperationException("the scheduler ended a sequence without a finish reason");
            }
            _hasCurrent = false;
            var token = _tokens.Current;
            if ((uint)token.Choice >= (uint)_choices.Length)
            {
                throw new InvalidOperationException($"the scheduler sent a token of choice {token.Choice}, the request has {_choices.Length}");
            }
            var choice = _choices[token.Choice];
            if (choice.Finished)
            {
                continue; // a choice ended by a stop sequence: tokens already in flight are dropped
            }
            choice.Tokens++;
            string text = choice.Decoder.Append(token.TokenId);
            if (token.Finish is not null)
            {
                text += choice.Decoder.Flush();
            }
            // vLLM does not look for stop strings before min_tokens tokens.
            string emitted = choice.Tokens <= _minTokens ? text : choice.Stop.Append(text);
            if (choice.Stop.Stopped)
            {
                Finish(choice);
                if (_open > 0)
                {
                    _choiceCancellation?.Cancel(token.Choice);
                }
                else
                {
                    // Ends the request in the scheduler now: nothing after the stop text will be sent.
                    await _cts.CancelAsync().ConfigureAwait(false);
                }
                return new GenerationDelta(emitted, [token.TokenId], "stop", token.Choice, token.Logprobs);
            }
            if (token.Finish is { } finish)
            {
                Finish(choice);
                return new GenerationDelta(emitted + choice.Stop.Flush(), [token.TokenId], finish == FinishReason.Stop ? "stop" : "length", token.Choice, token.Logprobs);
            }
            return new GenerationDelta(emitted, [token.TokenId], null, token.Choice, token.Logprobs);
        }
        return null;
    }

    private void Finish(ChoiceState choice)
    {
        choice.Finished = true;
        _open--;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_open > 0)
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

    private sealed class ChoiceState(Llama4StreamingDecoder decoder, StopSequenceMatcher stop)
    {
        public Llama4StreamingDecoder Decoder { get; } = decoder;
        public StopSequenceMatcher Stop { get; } = stop;
        public int Tokens { get; set; }
        public bool Finished { get; set; }
    }
}
