using System.Collections.Frozen;

namespace Distributed.Protocol.Contracts;

/// <summary>The set of experts one worker holds (its shard), immutable.</summary>
public sealed class ShardManifest
{
    private readonly FrozenSet<ExpertKey> _experts;

    /// <summary>Creates a manifest from any sequence of experts (duplicates collapse).</summary>
    public ShardManifest(IEnumerable<ExpertKey> experts)
    {
        _experts = experts.ToFrozenSet();
        Layers = _experts.GroupBy(k => k.Layer)
            .OrderBy(g => g.Key)
            .Select(g => (g.Key, g.Select(k => k.Expert).Order().ToArray()))
            .ToArray();
    }

    /// <summary>An empty shard.</summary>
    public static ShardManifest Empty { get; } = new([]);

    /// <summary>Number of experts held.</summary>
    public int Count => _experts.Count;

    /// <summary>Experts per layer, layers ascending and experts ascending.</summary>
    public IReadOnlyList<(int Layer, int[] Experts)> Layers { get; }

    /// <summary>All experts held, in layer then expert order.</summary>
    public IEnumerable<ExpertKey> Experts => Layers.SelectMany(l => l.Experts.Select(e => new ExpertKey(l.Layer, e)));

    /// <summary>True when this shard holds <paramref name="key"/>.</summary>
    public bool Contains(ExpertKey key) => _experts.Contains(key);

    /// <summary>
    /// Parses <c>"all"</c> (every expert of every MoE layer of <paramref name="model"/>) or a list such as
    /// <c>"1:0-63,3:0-63"</c> / <c>"*:0-15"</c> (layer <c>*</c> = every MoE layer; ranges inclusive).
    /// </summary>
    /// <exception cref="FormatException">Malformed, a non-MoE layer, or an expert out of range; the message quotes the part.</exception>
    public static ShardManifest Parse(string spec, ModelDescriptor model)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(model);
        spec = spec.Trim();
        if (spec.Equals("all", StringComparison.OrdinalIgnoreCase))
        {
            return new ShardManifest(model.MoeLayers.SelectMany(l => Enumerable.Range(0, model.NumExperts).Select(e => new ExpertKey(l, e))));
        }
        var keys = new List<ExpertKey>();
        foreach (var rawPart in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int colon = rawPart.IndexOf(':');
            if (colon <= 0)
            {
                throw new FormatException($"shard spec part '{rawPart}' is not 'layer:experts'");
            }
            string layerText = rawPart[..colon];
            string expertText = rawPart[(colon + 1)..];
            int[] layers;
            if (layerText == "*")
            {
                layers = model.MoeLayers;
            }
            else if (int.TryParse(layerText, out int layer) && model.IsMoeLayer(layer))
            {
                layers = [layer];
            }
            else
            {
                throw new FormatException($"shard spec part '{rawPart}': '{layerText}' is not a MoE layer (moe layers [{string.Join(", ", model.MoeLayers)}])");
            }
            if (!TryParseRange(expertText, out int first, out int last) || last >= model.NumExperts)
            {
                throw new FormatException($"shard spec part '{rawPart}': experts '{expertText}' are not a range within [0, {model.NumExperts})");
            }
            foreach (int l in layers)
            {
                for (int e = first; e <= last; e++)
                {
                    keys.Add(new ExpertKey(l, e));
                }
            }
        }
        return new ShardManifest(keys);
    }

    private static bool TryParseRange(string text, out int first, out int last)
    {
        int dash = text.IndexOf('-');
        if (dash < 0)
        {
            bool single = int.TryParse(text, out first);
            last = first;
            return single && first >= 0;
        }
        bool a = int.TryParse(text[..dash], out first);
        bool b = int.TryParse(text[(dash + 1)..], out last);
        return a && b && first >= 0 && last >= first;
    }
}
