using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Distributed.Coordinator.Serving;

namespace Distributed.Coordinator.Tests.Serving.Api;

/// <summary>
/// A scripted scheduler: <see cref="Script"/> decides per request which token ids come out (the last one carries
/// <see cref="FinishFor"/>), or <see cref="Admission"/> throws instead. Records every request and whether its
/// cancellation token fired before the stream ended.
/// </summary>
internal sealed class FakeGenerationScheduler : IGenerationScheduler
{
    public int VocabSize { get; init; } = 512;

    public int MaxContextTokens { get; init; } = 4096;

    /// <summary>Token ids to emit for a request (default: ids 65.. = "A", "B", ... up to MaxTokens).</summary>
    public Func<GenerationRequest, int[]> Script { get; init; } = r => Enumerable.Range(0, r.MaxTokens).Select(i => 65 + (i % 26)).ToArray();

    /// <summary>Finish reason of the last token (default: Length when MaxTokens was reached, else Stop).</summary>
    public Func<GenerationRequest, int, FinishReason> FinishFor { get; init; } = (r, count) => count >= r.MaxTokens ? FinishReason.Length : FinishReason.Stop;

    /// <summary>Thrown at admission (the first MoveNextAsync) when set.</summary>
    public Func<GenerationRequest, Exception?> Admission { get; init; } = _ => null;

    /// <summary>Delay before each token after the first.</summary>
    public TimeSpan TokenDelay { get; init; } = TimeSpan.Zero;

    /// <summary>Thrown after this many tokens when set (a mid-stream failure).</summary>
    public int? FailAfter { get; init; }

    public ConcurrentQueue<GenerationRequest> Requests { get; } = new();

    public ConcurrentDictionary<string, bool> CancelledById { get; } = new();

    /// <summary>Completes when a request's stream ended (id → cancelled?).</summary>
    public ConcurrentDictionary<string, TaskCompletionSource<bool>> Ended { get; } = new();

    public TaskCompletionSource<bool> EndedTask(string id) => Ended.GetOrAdd(id, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));

    public async IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Requests.Enqueue(request);
        if (Admission(request) is { } ex)
        {
            throw ex;
        }
        var ended = EndedTask(request.Id);
        int[] ids = Script(request);
        try
        {
            for (int i = 0; i < ids.Length; i++)
            {
                if (i > 0 && TokenDelay > TimeSpan.Zero)
                {
                    await Task.Delay(TokenDelay, cancellationToken);
                }
                cancellationToken.ThrowIfCancellationRequested();
                if (FailAfter is int fail && i == fail)
                {
                    throw new InvalidOperationException("scripted failure");
                }
                bool last = i == ids.Length - 1;
                // Every choice gets the same script, interleaved token by token; a cancelled choice gets no more.
                for (int choice = 0; choice < request.N; choice++)
                {
                    if (request.ChoiceCancellation?.IsCancelled(choice) != true)
                    {
                        yield return new GeneratedToken(ids[i], i, last ? FinishFor(request, ids.Length) : null, choice,
                            request.Logprobs is int k ? new TokenLogprobs(-0.5f, [.. Enumerable.Range(0, k)], [.. Enumerable.Repeat(-1f, k)]) : null);
                    }
                }
            }
        }
        finally
        {
            CancelledById[request.Id] = cancellationToken.IsCancellationRequested;
            ended.TrySetResult(cancellationToken.IsCancellationRequested);
        }
    }
}
