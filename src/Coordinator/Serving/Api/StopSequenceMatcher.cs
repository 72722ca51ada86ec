namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// Text-level stop sequences over a stream of decoded text pieces. A stop sequence may span any number of pieces
/// (tokens): text that could still become the start of a stop sequence is held back until it is either completed
/// (the output ends just before the earliest match, the stop text excluded) or ruled out (the text is released).
/// One instance per sequence; not thread-safe.
/// </summary>
public sealed class StopSequenceMatcher
{
    private readonly string[] _stops;
    private string _pending = string.Empty;

    /// <summary>Creates a matcher for <paramref name="stops"/> (each non-empty; none means pass-through).</summary>
    /// <exception cref="ArgumentException">A stop sequence is null or empty.</exception>
    public StopSequenceMatcher(IReadOnlyList<string> stops)
    {
        ArgumentNullException.ThrowIfNull(stops);
        foreach (string s in stops)
        {
            if (string.IsNullOrEmpty(s))
            {
                throw new ArgumentException("stop sequences must be non-empty", nameof(stops));
            }
        }
        _stops = [.. stops];
    }

    /// <summary>True once a stop sequence has matched; later input is ignored.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Characters currently held back as a possible stop-sequence prefix.</summary>
    public int HeldBackLength => _pending.Length;

    /// <summary>
    /// Adds the next decoded piece and returns the text that is now safe to emit: everything up to the earliest stop
    /// match (then <see cref="Stopped"/> becomes true), or everything except the longest tail that is a proper prefix of
    /// some stop sequence.
    /// </summary>
    public string Append(string piece)
    {
        ArgumentNullException.ThrowIfNull(piece);
        if (Stopped)
        {
            return string.Empty;
        }
        if (_stops.Length == 0)
        {
            return piece;
        }
        string text = _pending.Length == 0 ? piece : _pending + piece;
        int earliest = -1;
        foreach (string stop in _stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (earliest < 0 || at < earliest))
            {
                earliest = at;
            }
        }
        if (earliest >= 0)
        {
            Stopped = true;
            _pending = string.Empty;
            return text[..earliest];
        }
        int hold = 0;
        foreach (string stop in _stops)
        {
            // The held tail is shorter than the stop (a full occurrence would have matched above).
            for (int k = Math.Min(stop.Length - 1, text.Length); k > hold; k--)
            {
                if (text.AsSpan(text.Length - k).SequenceEqual(stop.AsSpan(0, k)))
                {
                    hold = k;
                    break;
                }
            }
        }
        _pending = text[(text.Length - hold)..];
        return text[..(text.Length - hold)];
    }

    /// <summary>Ends the stream without a match: returns the held-back text (empty after a match).</summary>
    public string Flush()
    {
        string rest = Stopped ? string.Empty : _pending;
        _pending = string.Empty;
        return rest;
    }
}
