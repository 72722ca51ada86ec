using System.Diagnostics;
using Distributed.Coordinator.Model.Llama4;

namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>Best-of-N timings of one engine run (after one warm-up run).</summary>
/// <param name="PrefillSeconds">Submission to the first token: the prompt through the KV cache in prefill steps of
/// <see cref="Llama4Engine.PrefillChunkTokens"/>.</param>
/// <param name="DecodeSecondsPerToken">One greedy single-token step through the cache.</param>
public readonly record struct EngineTimings(double PrefillSeconds, double DecodeSecondsPerToken);

/// <summary>
/// The one timing loop behind <c>bench</c> and the GPU check: greedy requests through the scheduler (the generation
/// loop <c>serve</c> and <c>infer</c> use), EOS ignored, each on a fresh scheduler and KV pool (made before the clock
/// starts). Every round times two whole requests, one of the prompt and 1 token and one of the prompt and
/// 1 + decodeSteps tokens, each from submission to the end of its token stream: prefill is the first, one decode step the
/// difference over decodeSteps. Whole-request times do not depend on when the consumer happens to read the streamed
/// tokens (on a fast backend they arrive in bunches, and timing them one by one measured nothing). Round 0 warms up
/// (JIT tiering, page faults of the memory map, lazily loaded experts) and is not counted; the best round of each counts.
/// </summary>
public static class EngineBenchmark
{
    /// <summary>Times <paramref name="prompt"/> then <paramref name="decodeSteps"/> decode steps, best of <paramref name="repeats"/>.</summary>
    public static async Task<EngineTimings> RunAsync(Llama4Engine engine, int[] prompt, int decodeSteps, int repeats, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentOutOfRangeException.ThrowIfZero(prompt.Length);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(decodeSteps);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repeats);
        double bestPrefill = double.MaxValue, bestWhole = double.MaxValue;
        for (int run = 0; run <= repeats; run++)
        {
            double prefill = await TimeRequestAsync(engine, prompt, 1, $"bench-{run}-p", cancellationToken).ConfigureAwait(false);
            double whole = await TimeRequestAsync(engine, prompt, decodeSteps + 1, $"bench-{run}-d", cancellationToken).ConfigureAwait(false);
            if (run > 0)
            {
                bestPrefill = Math.Min(bestPrefill, prefill);
                bestWhole = Math.Min(bestWhole, whole);
            }
        }
        return new EngineTimings(bestPrefill, Math.Max(0, bestWhole - bestPrefill) / decodeSteps);
    }

    // Seconds from submission to the end of the token stream of one greedy request of maxTokens tokens.
    private static async Task<double> TimeRequestAsync(Llama4Engine engine, int[] prompt, int maxTokens, string id, CancellationToken cancellationToken)
    {
        await using var scheduler = EngineInference.ForOneRequest(engine, prompt.Length + maxTokens + 1);
        var request = new GenerationRequest(id, prompt, maxTokens, SamplingParams.Greedy) { IgnoreEos = true };
        int tokens = 0;
        long start = Stopwatch.GetTimestamp();
        await foreach (var token in scheduler.GenerateAsync(request, cancellationToken).ConfigureAwait(false))
        {
            tokens++;
        }
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        if (tokens != maxTokens)
        {
            throw new InvalidOperationException($"benchmark request {id} produced {tokens} tokens, expected {maxTokens}");
        }
        return seconds;
    }
}
