using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;

namespace Distributed.Tests.Shared;

/// <summary>
/// The engine's raw logits computed directly (one forward over a whole token list on a fresh pool, no scheduler), and an
/// independent transcription of vLLM's logits processing, to check what the serving path returns: the logprobs it sends
/// must be the log-softmax of exactly these processed logits.
/// </summary>
public static class ReferenceLogits
{
    /// <summary>Logits <c>[tokens, vocab]</c> at every position of <paramref name="tokens"/>.</summary>
    public static async Task<float[]> AllRowsAsync(Llama4Engine engine, int[] tokens)
    {
        const int blockSize = 16;
        long bytes = KvBlockPool.BlocksNeeded(engine.Config, blockSize, tokens.Length, tokens.Length) * KvBlockPool.BytesPerBlock(engine.Config, blockSize);
        using var pool = new KvBlockPool(engine.Config, blockSize, Math.Max(bytes, 1 << 16), engine.Backend, prefixCaching: false);
        using var cache = new PagedKvCache(pool);
        var step = await engine.Model.ForwardAsync([new SequenceStep(cache, tokens, LogitsRequest.All)], false, CancellationToken.None);
        return step.Logits;
    }

    /// <summary>
    /// vLLM's processing of one row for the token after <paramref name="generatedBefore"/>: logit bias added; stop ids at
    /// −∞ while fewer than min_tokens were generated; repetition penalty over prompt ∪ output (divide positive logits,
    /// multiply the others); frequency × count and presence × [count &gt; 0] subtracted.
    /// </summary>
    public static double[] Process(ReadOnlySpan<float> row, SamplingParams p, IReadOnlyList<int> prompt, IReadOnlyList<int> generatedBefore, IEnumerable<int> stopIds)
    {
        var z = new double[row.Length];
        for (int i = 0; i < z.Length; i++)
        {
            z[i] = row[i];
        }
        // The engine computes in float: round each step to float as it does, so the comparison can be tight.
        foreach (var (id, bias) in p.LogitBias ?? new Dictionary<int, float>())
        {
            z[id] = (float)(row[id] + bias);
        }
        if (generatedBefore.Count < p.MinTokens)
        {
            foreach (int id in stopIds)
            {
                z[id] = double.NegativeInfinity;
            }
        }
        if (p.RepetitionPenalty != 1f)
        {
            foreach (int id in prompt.Concat(generatedBefore).Distinct())
            {
                z[id] = z[id] > 0 ? (float)(z[id] / p.RepetitionPenalty) : (float)(z[id] * p.RepetitionPenalty);
            }
        }
        foreach (var g in generatedBefore.GroupBy(t => t))
        {
            if (p.FrequencyPenalty != 0 || p.PresencePenalty != 0)
            {
                z[g.Key] = (float)(z[g.Key] - (p.FrequencyPenalty * g.Count() + p.PresencePenalty));
            }
        }
        return z;
    }

    /// <summary>log-softmax(z / temperature) over every id (temperature 0 counts as 1: greedy).</summary>
    public static double[] LogSoftmax(double[] z, double temperature)
    {
        double t = temperature == 0 ? 1 : temperature;
        double max = z.Max();
        double sum = z.Sum(v => Math.Exp((v - max) / t));
        return [.. z.Select(v => (v - max) / t - Math.Log(sum))];
    }
}
