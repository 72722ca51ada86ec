using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;

namespace Distributed.Tests.Shared;

/// <summary>
/// Several sequences run together, straight through the model (no scheduler): one step prefills every prompt (logits of
/// every row), then greedy decode steps give every sequence one token each. Steps have many sequences, so micro-batch
/// ping-pong (<see cref="MicroBatching"/>) engages; the logits of every step are returned to compare bitwise.
/// </summary>
public static class BatchedSteps
{
    /// <summary>Prompts of different lengths, so the micro-batch split falls between unequal sequences.</summary>
    public static int[][] Prompts(int vocab, int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(i => Enumerable.Range(0, 1 + (i * 5 + 3) % 11).Select(_ => rng.Next(vocab)).ToArray())];
    }

    /// <summary>The logits <c>[rows, vocab]</c> of the prefill step and of each of <paramref name="decodeSteps"/> decode steps.</summary>
    /// <param name="engine">The model to run.</param>
    /// <param name="prompts">One prompt per sequence.</param>
    /// <param name="decodeSteps">Greedy decode steps after the prefill.</param>
    /// <param name="microBatching">The split rule for these steps (restored afterwards).</param>
    /// <param name="stepSeconds">When given, receives the wall time of every step (prefill first), in seconds.</param>
    public static async Task<List<float[]>> RunAsync(Llama4Engine engine, int[][] prompts, int decodeSteps, MicroBatching microBatching,
        List<double>? stepSeconds = null)
    {
        const int blockSize = 16;
        int longest = prompts.Max(p => p.Length) + decodeSteps;
        long bytes = prompts.Length * KvBlockPool.BlocksNeeded(engine.Config, blockSize, longest, longest) * KvBlockPool.BytesPerBlock(engine.Config, blockSize);
        using var pool = new KvBlockPool(engine.Config, blockSize, Math.Max(bytes, 1 << 16), engine.Backend, prefixCaching: false);
        var caches = prompts.Select(_ => new PagedKvCache(pool)).ToArray();
        var before = engine.Model.MicroBatching;
        engine.Model.MicroBatching = microBatching;
        try
        {
            var steps = new List<float[]>();
            int vocab = engine.Config.VocabSize;
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            var result = await engine.Model.ForwardAsync([.. prompts.Select((p, i) => new SequenceStep(caches[i], p, LogitsRequest.All))], false, CancellationToken.None);
            stepSeconds?.Add(System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds);
            steps.Add(result.Logits);
            var next = new int[prompts.Length];
            int row = 0;
            for (int i = 0; i < prompts.Length; i++)
            {
                row += prompts[i].Length;
                next[i] = Argmax(result.Logits.AsSpan((row - 1) * vocab, vocab));
            }
            for (int d = 0; d < decodeSteps; d++)
            {
                t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                result = await engine.Model.ForwardAsync([.. caches.Select((c, i) => new SequenceStep(c, new[] { next[i] }, LogitsRequest.Last))], false,
                    CancellationToken.None);
                stepSeconds?.Add(System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds);
                steps.Add(result.Logits);
                for (int i = 0; i < prompts.Length; i++)
                {
                    next[i] = Argmax(result.Logits.AsSpan(i * vocab, vocab));
                }
            }
            return steps;
        }
        finally
        {
            engine.Model.MicroBatching = before;
            foreach (var c in caches)
            {
                c.Dispose();
            }
        }
    }

    /// <summary>Index of the first difference (bit patterns) between two step lists, or null when bitwise identical.</summary>
    public static string? FirstDifference(List<float[]> expected, List<float[]> actual)
    {
        if (expected.Count != actual.Count)
        {
            return $"{actual.Count} steps, expected {expected.Count}";
        }
        for (int s = 0; s < expected.Count; s++)
        {
            if (expected[s].Length != actual[s].Length)
            {
                return $"step {s}: {actual[s].Length} logits, expected {expected[s].Length}";
            }
            for (int i = 0; i < expected[s].Length; i++)
            {
                if (BitConverter.SingleToInt32Bits(expected[s][i]) != BitConverter.SingleToInt32Bits(actual[s][i]))
                {
                    return $"step {s}, logit {i}: {actual[s][i]:R} != {expected[s][i]:R}";
                }
            }
        }
        return null;
    }

    private static int Argmax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++)
        {
            if (row[i] > row[best])
            {
                best = i;
            }
        }
        return best;
    }
}
