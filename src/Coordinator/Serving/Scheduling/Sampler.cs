namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>A sampled token and, when asked for, its log-probabilities.</summary>
/// <param name="TokenId">The token.</param>
/// <param name="Logprobs">Null unless requested.</param>
public readonly record struct SampledToken(int TokenId, TokenLogprobs? Logprobs);

/// <summary>
/// Picks a sequence's next token from one row of logits, with the processing of <see cref="SamplingParams"/> (bias,
/// min-tokens mask, repetition/frequency/presence penalties, temperature, top-k, top-p) and, on request, the
/// log-probabilities of the distribution it sampled from. Greedy when temperature is 0 (argmax, lowest id on ties).
/// Each sequence has its own sampler: its generator (SplitMix64, reproducible with a seed, independent of what else shares
/// the batch) and its counts of generated tokens for the penalties. Not thread-safe.
/// </summary>
public sealed class Sampler
{
    /// <summary>Log-probability written for a token the distribution excludes (vLLM's stand-in for −∞ in JSON).</summary>
    public const float ExcludedLogprob = -9999f;

    private readonly SamplingParams _p;
    private readonly HashSet<int>? _promptTokens;
    private readonly int[] _stopIds;
    private readonly Dictionary<int, int> _outputCounts = [];
    private ulong _state;
    private float[] _processed = [];
    private double[] _probs = [];
    private int[] _order = [];

    /// <summary>Creates a sampler; an unseeded one draws its seed from the system RNG.</summary>
    public Sampler(SamplingParams parameters) : this(parameters, [], [], parameters?.Seed)
    {
    }

    /// <summary>Creates a sampler for one sequence.</summary>
    /// <param name="parameters">Validated settings.</param>
    /// <param name="promptIds">The prompt (the repetition penalty applies to its tokens too).</param>
    /// <param name="stopIds">Token ids masked while fewer than <see cref="SamplingParams.MinTokens"/> tokens were generated.</param>
    /// <param name="seed">The generator's seed; null draws one from the system RNG.</param>
    public Sampler(SamplingParams parameters, ReadOnlySpan<int> promptIds, IReadOnlyCollection<int> stopIds, ulong? seed)
    {
        _p = parameters ?? throw new ArgumentNullException(nameof(parameters));
        ArgumentNullException.ThrowIfNull(stopIds);
        _state = seed ?? (ulong)Random.Shared.NextInt64();
        _stopIds = [.. stopIds];
        if (parameters.RepetitionPenalty != 1f)
        {
            _promptTokens = [.. promptIds];
        }
    }

    /// <summary>Tokens this sampler has produced.</summary>
    public int Generated { get; private set; }

    /// <summary>Validates sampling fields.</summary>
    /// <exception cref="ArgumentException">Names the bad field.</exception>
    public static void Validate(SamplingParams p, int vocabSize = int.MaxValue)
    {
        ArgumentNullException.ThrowIfNull(p);
        if (!float.IsFinite(p.Temperature) || p.Temperature < 0 || p.Temperature > 100)
        {
            throw new ArgumentException($"temperature must be in [0, 100], got {p.Temperature}");
        }
        if (!float.IsFinite(p.TopP) || p.TopP <= 0 || p.TopP > 1)
        {
            throw new ArgumentException($"top_p must be in (0, 1], got {p.TopP}");
        }
        if (p.TopK < 0)
        {
            throw new ArgumentException($"top_k must be >= 0, got {p.TopK}");
        }
        if (!float.IsFinite(p.PresencePenalty) || Math.Abs(p.PresencePenalty) > 2)
        {
            throw new ArgumentException($"presence_penalty must be in [-2, 2], got {p.PresencePenalty}");
        }
        if (!float.IsFinite(p.FrequencyPenalty) || Math.Abs(p.FrequencyPenalty) > 2)
        {
            throw new ArgumentException($"frequency_penalty must be in [-2, 2], got {p.FrequencyPenalty}");
        }
        if (!float.IsFinite(p.RepetitionPenalty) || p.RepetitionPenalty <= 0 || p.RepetitionPenalty > 2)
        {
            throw new ArgumentException($"repetition_penalty must be in (0, 2], got {p.RepetitionPenalty}");
        }
        if (p.MinTokens < 0)
        {
            throw new ArgumentException($"min_tokens must be >= 0, got {p.MinTokens}");
        }
        foreach (var (id, bias) in p.LogitBias ?? new Dictionary<int, float>())
        {
            if ((uint)id >= (uint)vocabSize || !float.IsFinite(bias) || Math.Abs(bias) > 100)
            {
                throw new ArgumentException($"logit_bias entry {id}: {bias} must be a token id in [0, {vocabSize}) with a bias in [-100, 100]");
            }
        }
    }

    /// <summary>Chooses a token from <paramref name="logits"/> (one vocabulary row) and counts it.</summary>
    public int Next(ReadOnlySpan<float> logits) => Sample(logits, null).TokenId;

    /// <summary>
    /// Chooses a token from <paramref name="logits"/> and counts it for the penalties; with <paramref name="topLogprobs"/>
    /// set, also returns the chosen token's log-probability and the <paramref name="topLogprobs"/> most likely tokens'.
    /// </summary>
    public SampledToken Sample(ReadOnlySpan<float> logits, int? topLogprobs)
    {
        ReadOnlySpan<float> z = _p.ProcessesLogits ? Process(logits) : logits;
        int token;
        TokenLogprobs? lp = null;
        if (_p.Temperature == 0f)
        {
            token = Argmax(z);
            if (topLogprobs is int k)
            {
                lp = Logprobs(z, 1.0, token, k, keep: -1);
            }
        }
        else
        {
            token = Draw(z, out int keep);
            if (topLogprobs is int k)
            {
                lp = Logprobs(z, _p.Temperature, token, k, keep);
            }
        }
        Generated++;
        _outputCounts[token] = _outputCounts.GetValueOrDefault(token) + 1;
        return new SampledToken(token, lp);
    }

    /// <summary>The processed logits (bias, min-tokens mask, penalties) of <paramref name="logits"/> in a scratch row.</summary>
    private float[] Process(ReadOnlySpan<float> logits)
    {
        if (_processed.Length < logits.Length)
        {
            _processed = new float[logits.Length];
        }
        var z = _processed.AsSpan(0, logits.Length);
        logits.CopyTo(z);
        if (_p.LogitBias is { } bias)
        {
            foreach (var (id, b) in bias)
            {
                if ((uint)id < (uint)z.Length)
                {
                    z[id] += b;
                }
            }
        }
        if (Generated < _p.MinTokens)
        {
            foreach (int id in _stopIds)
            {
                if ((uint)id < (uint)z.Length)
                {
                    z[id] = float.NegativeInfinity;
                }
            }
        }
        if (_p.RepetitionPenalty != 1f)
        {
            float r = _p.RepetitionPenalty;
            foreach (int id in _promptTokens!.Concat(_outputCounts.Keys).Distinct())
            {
                if ((uint)id < (uint)z.Length)
                {
                    z[id] = z[id] > 0 ? z[id] / r : z[id] * r;
                }
            }
        }
        if (_p.FrequencyPenalty != 0 || _p.PresencePenalty != 0)
        {
            foreach (var (id, count) in _outputCounts)
            {
                if ((uint)id < (uint)z.Length)
                {
                    z[id] -= _p.FrequencyPenalty * count + _p.PresencePenalty;
                }
            }
        }
        return _processed;
    }

    /// <summary>Samples from softmax(z / T) restricted by top-k and top-p; <paramref name="keep"/> = candidates kept.</summary>
    private int Draw(ReadOnlySpan<float> z, out int keep)
    {
        int n = z.Length;
        if (_probs.Length < n)
        {
            _probs = new double[n];
            _order = new int[n];
        }
        // Candidates, most likely first: only top-k and top-p need an order, and top-k alone needs only its k best
        // (a 202,048-entry vocabulary is not sorted per token unless top_p asks for it).
        keep = CandidatesDescending(z, _p.TopK, _p.TopP < 1f, _order);
        var order = _order.AsSpan(0, keep);
        float max = float.NegativeInfinity;
        foreach (int id in order)
        {
            max = Math.Max(max, z[id]);
        }
        if (!float.IsFinite(max))
        {
            keep = -1;
            return Argmax(z);
        }
        double sum = 0;
        var probs = _probs.AsSpan(0, keep);
        for (int i = 0; i < keep; i++)
        {
            double e = Math.Exp((z[order[i]] - max) / _p.Temperature);
            probs[i] = e;
            sum += e;
        }
        if (_p.TopP < 1f)
        {
            double cumulative = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++)
            {
                cumulative += probs[i] / sum;
                if (cumulative >= _p.TopP)
                {
                    cut = i + 1;
                    break;
                }
            }
            keep = cut;
            sum = 0;
            for (int i = 0; i < keep; i++)
            {
                sum += probs[i];
            }
        }
        double u = NextDouble() * sum;
        double acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[i];
            if (u < acc)
            {
                return order[i];
            }
        }
        return order[keep - 1];
    }

    /// <summary>
    /// Log-probabilities under softmax(z / <paramref name="temperature"/>), renormalized over the first
    /// <paramref name="keep"/> ids of the candidate order when top-k/top-p cut it (<paramref name="keep"/> &lt; 0 or the
    /// whole vocabulary: no cut).
    /// </summary>
    private TokenLogprobs Logprobs(ReadOnlySpan<float> z, double temperature, int token, int top, int keep)
    {
        bool cut = keep >= 0 && keep < z.Length && (_p.TopK > 0 || _p.TopP < 1f);
        HashSet<int>? kept = cut ? [.. _order.AsSpan(0, keep).ToArray()] : null;
        double max = double.NegativeInfinity;
        for (int i = 0; i < z.Length; i++)
        {
            if (kept is null || kept.Contains(i))
            {
                max = Math.Max(max, z[i]);
            }
        }
        double sum = 0;
        if (kept is null)
        {
            for (int i = 0; i < z.Length; i++)
            {
                sum += Math.Exp((z[i] - max) / temperature);
            }
        }
        else
        {
            foreach (int i in kept)
            {
                sum += Math.Exp((z[i] - max) / temperature);
            }
        }
        double logSum = Math.Log(sum);
        int count = Math.Min(top, z.Length);
        var ids = new int[count];
        if (count > 0)
        {
            CandidatesDescending(z, count, ordered: true, ids, limit: count);
        }
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = Logprob(z, ids[i], kept, max, temperature, logSum);
        }
        return new TokenLogprobs(Logprob(z, token, kept, max, temperature, logSum), ids, values);
    }

    private static float Logprob(ReadOnlySpan<float> z, int id, HashSet<int>? kept, double max, double temperature, double logSum) =>
        (kept is not null && !kept.Contains(id)) || float.IsNegativeInfinity(z[id])
            ? ExcludedLogprob
            : (float)Math.Max(ExcludedLogprob, (z[id] - max) / temperature - logSum);

    /// <summary>
    /// Writes candidate ids into <paramref name="ids"/> and returns how many: every id in index order when neither top-k
    /// nor top-p is on; the k best by logit, descending (ties: lower id first) with top-k; every id descending when
    /// only top-p is on.
    /// </summary>
    private static int CandidatesDescending(ReadOnlySpan<float> logits, int topK, bool ordered, int[] ids, int limit = int.MaxValue)
    {
        int n = logits.Length;
        if (topK <= 0 || topK >= n)
        {
            for (int i = 0; i < Math.Min(n, limit); i++)
            {
                ids[i] = i;
            }
            if (ordered)
            {
                var keys = logits.ToArray();
                ids.AsSpan(0, n).Sort((a, b) => keys[b] != keys[a] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b));
            }
            return n;
        }
        // Size-k min-heap of (logit, -id): O(n log k).
        var heap = new PriorityQueue<int, (float Logit, int NegId)>(topK);
        for (int i = 0; i < n; i++)
        {
            var key = (logits[i], -i);
            if (heap.Count < topK)
            {
                heap.Enqueue(i, key);
            }
            else if (heap.TryPeek(out _, out var worst) && (key.Item1 > worst.Logit || (key.Item1 == worst.Logit && key.Item2 > worst.NegId)))
            {
                heap.DequeueEnqueue(i, key);
            }
        }
        for (int i = topK - 1; i >= 0; i--)
        {
            ids[i] = heap.Dequeue();
        }
        return topK;
    }

    /// <summary>Argmax with the lowest id on ties; NaN never wins.</summary>
    public static int Argmax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        float bestValue = float.NegativeInfinity;
        for (int i = 0; i < logits.Length; i++)
        {
            if (logits[i] > bestValue)
            {
                bestValue = logits[i];
                best = i;
            }
        }
        return best;
    }

    // SplitMix64: tiny, fast, and fully determined by the seed (System.Random's algorithm is not specified).
    private double NextDouble()
    {
        ulong z = _state += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1ul << 53));
    }
}
