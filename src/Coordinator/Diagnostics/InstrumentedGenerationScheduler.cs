using System.Diagnostics;
using System.Runtime.CompilerServices;
using Distributed.Coordinator.Serving;

namespace Distributed.Coordinator.Diagnostics;

/// <summary>
/// Wraps a scheduler to measure what a client sees, per request: outcome, time to first token, time between tokens,
/// tokens generated; and to trace it: a <c>generate</c> span per request (child of the HTTP request's span when there
/// is one) with a <c>prefill</c> child (admission + queue + prefill, up to the first token) and one <c>decode_step</c>
/// child per later token. Costs two timestamp reads and one histogram record per token when nothing listens to the
/// spans. Forwards disposal to the inner scheduler.
/// </summary>
public sealed class InstrumentedGenerationScheduler(IGenerationScheduler inner, CoordinatorInstruments instruments) : IGenerationScheduler, IAsyncDisposable
{
    /// <summary>The wrapped scheduler.</summary>
    public IGenerationScheduler Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    /// <inheritdoc />
    public int VocabSize => Inner.VocabSize;

    /// <inheritdoc />
    public int MaxContextTokens => Inner.MaxContextTokens;

    /// <inheritdoc />
    public async IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var source = instruments.ActivitySource;
        using var generate = source.StartActivity("generate", ActivityKind.Internal);
        generate?.SetTag("moe.request_id", request.Id);
        generate?.SetTag("moe.prompt_tokens", request.PromptIds.Length);
        generate?.SetTag("moe.max_tokens", request.MaxTokens);
        var step = source.StartActivity("prefill", ActivityKind.Internal);
        long start = Stopwatch.GetTimestamp(), last = start;
        int count = 0;
        RequestOutcome outcome = RequestOutcome.Cancelled;
        bool counted = false;
        IAsyncEnumerator<GeneratedToken> tokens;
        try
        {
            tokens = Inner.GenerateAsync(request, cancellationToken).GetAsyncEnumerator(cancellationToken);
        }
        catch (Exception ex) when (ex is QueueFullException or RequestTooLargeException)
        {
            Fail(step, generate, ex, RequestOutcome.Rejected);
            throw;
        }
        try
        {
            while (true)
            {
                bool more;
                try
                {
                    more = await tokens.MoveNextAsync().ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is QueueFullException or RequestTooLargeException)
                {
                    outcome = RequestOutcome.Rejected;
                    step?.SetStatus(ActivityStatusCode.Error, ex.Message);
                    throw;
                }
                catch (OperationCanceledException)
                {
                    outcome = RequestOutcome.Cancelled;
                    throw;
                }
                catch (Exception ex)
                {
                    outcome = RequestOutcome.Error;
                    step?.SetStatus(ActivityStatusCode.Error, ex.Message);
                    throw;
                }
                if (!more)
                {
                    break;
                }
                var token = tokens.Current;
                long now = Stopwatch.GetTimestamp();
                double seconds = (now - last) / (double)Stopwatch.Frequency;
                if (count++ == 0)
                {
                    instruments.FirstToken(seconds);
                }
                else
                {
                    instruments.NextToken(seconds);
                }
                last = now;
                step?.Dispose();
                step = null;
                if (token.Finish is { } finish)
                {
                    outcome = finish switch
                    {
                        FinishReason.Stop => RequestOutcome.Stop,
                        FinishReason.Length => RequestOutcome.Length,
                        _ => RequestOutcome.ContextLength,
                    };
                    // Counted before the consumer sees the last token: a client that reads its response and then
                    // scrapes /metrics must find its request there (the consumer disposes us only after responding).
                    instruments.RequestFinished(outcome);
                    counted = true;
                }
                yield return token;
                if (token.Finish is null)
                {
                    // Explicit parent: after a yield the iterator resumes in the consumer's context, not under generate.
                    step = generate is null ? null : source.StartActivity("decode_step", ActivityKind.Internal, generate.Context);
                }
            }
        }
        finally
        {
            if (step is not null)
            {
                step.Dispose();
            }
            await tokens.DisposeAsync().ConfigureAwait(false);
            if (!counted)
            {
                instruments.RequestFinished(outcome);
            }
            generate?.SetTag("moe.completion_tokens", count);
            generate?.SetTag("moe.outcome", outcome.ToString());
            if (outcome == RequestOutcome.Error)
            {
                generate?.SetStatus(ActivityStatusCode.Error);
            }
        }
    }

    private void Fail(Activity? step, Activity? generate, Exception ex, RequestOutcome outcome)
    {
        step?.SetStatus(ActivityStatusCode.Error, ex.Message);
        step?.Dispose();
        generate?.SetStatus(ActivityStatusCode.Error, ex.Message);
        instruments.RequestFinished(outcome);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Inner is IAsyncDisposable asyncDisposable)
        {
            await asyncDisposable.DisposeAsync().ConfigureAwait(false);
        }
        else if (Inner is IDisposable disposable)
        {
            disposable.Dispose();
        }
    }
}
