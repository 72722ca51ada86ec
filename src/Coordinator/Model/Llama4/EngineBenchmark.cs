using System.Diagnostics;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>Best-of-N timings of one engine run (after one warm-up run).</summary>
/// <param name="PrefillSeconds">Prompt through the KV cache, in prefill steps of <see cref="Llama4Engine.PrefillChunkTokens"/>.</param>
/// <param name="DecodeSecondsPerToken">One greedy single-token step through the cache.</param>
public readonly record struct EngineTimings(double PrefillSeconds, double DecodeSecondsPerToken);

/// <summary>
/// The one timing loop behind <c>bench</c> and the GPU check: prefill a prompt, then greedy decode steps, each run on a
/// fresh cache; run 0 warms up (JIT tiering, page faults of the memory map, lazily loaded experts) and is not counted.
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
        int vocab = engine.Config.VocabSize;
        double bestPrefill = double.MaxValue, bestDecode = double.MaxValue;
        for (int run = 0; run <= repeats; run++)
        {
            var cache = engine.CreateRequestCache(prompt.Length + decodeSteps + 1);
            using var owned = cache as IDisposable;
            var sw = Stopwatch.StartNew();
            StepResult step = null!;
            for (int start = 0; start < prompt.Length; start += engine.PrefillChunkTokens)
            {
                int n = Math.Min(engine.PrefillChunkTokens, prompt.Length - start);
                bool last = start + n == prompt.Length;
                step = await engine.Model.ForwardAsync([new SequenceStep(cache, prompt.AsMemory(start, n), last ? LogitsRequest.Last : LogitsRequest.None)],
                    false, cancellationToken).ConfigureAwait(false);
            }
            double prefill = sw.Elapsed.TotalSeconds;
            var token = new int[1];
            engine.Backend.Argmax(step.Logits, 1, vocab, token);
            sw.Restart();
            for (int i = 0; i < decodeSteps; i++)
            {
                step = await engine.Model.ForwardAsync([new SequenceStep(cache, token, LogitsRequest.Last)], false, cancellationToken).ConfigureAwait(false);
                engine.Backend.Argmax(step.Logits, 1, vocab, token);
            }
            double decode = sw.Elapsed.TotalSeconds / decodeSteps;
            if (run > 0)
            {
                bestPrefill = Math.Min(bestPrefill, prefill);
                bestDecode = Math.Min(bestDecode, decode);
            }
        }
        return new EngineTimings(bestPrefill, bestDecode);
    }
}
