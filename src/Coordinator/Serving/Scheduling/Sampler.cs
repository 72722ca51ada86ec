namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>
/// Picks the next token from one row of logits: greedy when temperature is 0 (argmax, lowest id on ties), otherwise
/// softmax(logits / T) restricted by top-k then top-p, drawn with the sequence's own generator (reproducible with a seed,
/// and independent of what else shares the batch).
/// </summary>
public sealed class Sampler
{
    private readonly SamplingParams _p;
    private ulong _state;
    private float[] _probs = [];
    private int[] _order = [];

    /// <summary>Creates a sampler; an unseeded one draws its seed from the system RNG.</summary>
    public Sampler(SamplingParams parameters)
    {
        _p = parameters ?? throw new ArgumentNullException(nameof(parameters));
        _state = parameters.Seed ?? (ulong)Random.Shared.NextInt64();
    }

    /// <summary>Validates sampling fields.</summary>
    /// <exception cref="ArgumentException">Names the bad field.</exception>
    public static void Validate(SamplingParams p)
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
    }

    /// <summary>Chooses a token from <paramref name="logits"/> (one vocabulary row).</summary>
    public int Next(ReadOnlySpan<float> logits)
    {
        if (_p.Temperature == 0f)
        {
            return Argmax(logits);
        }
        int n = logits.Length;
        if (_probs.Length < n)
        {
            _probs = new float[n];
            _order = new int[n];
        }
        // Candidates, most likely first: only top-k and top-p need an order, and top-k alone needs only its k best
        // (a 202,048-entry vocabulary is not sorted per token unless top_p asks for it).
        int keep = CandidatesDescending(logits, _p.TopK, _p.TopP < 1f, _order);
        var order = _order.AsSpan(0, keep);
        float max = float.NegativeInfinity;
        foreach (int id in order)
        {
            max = Math.Max(max, logits[id]);
        }
        if (!float.IsFinite(max))
        {
            return Argmax(logits);
        }
        double sum = 0;
        var probs = _probs.AsSpan(0, keep);
        for (int i = 0; i < keep; i++)
        {
            double e = Math.Exp((logits[order[i]] - max) / _p.Temperature);
            probs[i] = (float)e;
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
    /// Writes candidate ids into <paramref name="ids"/> and returns how many: every id in index order when neither top-k
    /// nor top-p is on; the k best by logit, descending (ties: lower id first) with top-k; every id descending when
    /// only top-p is on.
    /// </summary>
    private static int CandidatesDescending(ReadOnlySpan<float> logits, int topK, bool ordered, int[] ids)
    {
        int n = logits.Length;
        if (topK <= 0 || topK >= n)
        {
            for (int i = 0; i < n; i++)
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
