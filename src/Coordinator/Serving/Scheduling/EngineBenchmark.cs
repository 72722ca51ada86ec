using System.Diagnostics;
using Distributed.Coordinator.Model.Llama4;

namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>Best-of-N timings of one engine run (after one warm-up run).</summary>
/// <param name="PrefillSeconds">Submission to the first token: the prompt through the KV cache in prefill steps of
/// <see cref="Llama4Engine.PrefillChunkTokens"/>.</param>
/// <param name="DecodeSecondsPerToken">One greedy single-token step through the cache.</param>
public readonly record struct EngineTimings(double PrefillSeconds, double DecodeSecondsPerToken);

/// <summary>
/// The one timing loop behind <c>bench</c> and the GPU check: one greedy request through the scheduler (the generation
/// loop <c>serve</c> and <c>infer</c> use), prompt then decode steps, EOS ignored, each run on a fresh scheduler and KV
/// pool (made before the clock starts); run 0 warms up (JIT tiering, page faults of the memory map, lazily loaded
/// experts) and is not counted.
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
        double bestPrefill = double.MaxValue, bestDecode = double.MaxValue;
        for (int run = 0; run <= repeats; run++)
        {
            await using var scheduler = EngineInference.ForOneRequest(engine, prompt.Length + decodeSteps + 1);
            var request = new GenerationRequest($"bench-{run}", prompt, decodeSteps + 1, SamplingParams.Greedy) { IgnoreEos = true };
            long start = Stopwatch.GetTimestamp(), first = 0, last = 0;
            await foreach (var token in scheduler.GenerateAsync(request, cancellationToken).ConfigureAwait(false))
            {
                last = Stopwatch.GetTimestamp();
                if (token.Index == 0)
                {
                    first = last;
                }
            }
            double prefill = (first - start) / (double)Stopwatch.Frequency;
            double decode = (last - first) / (double)Stopwatch.Frequency / decodeSteps;
            if (run > 0)
            {
                bestPrefill = Math.Min(bestPrefill, prefill);
                bestDecode = Math.Min(bestDecode, decode);
            }
        }
        return new EngineTimings(bestPrefill, bestDecode);
    }
}
