using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Placement;

/// <summary>
/// A mutable copy of a placement plan for editing by worker id (not index): which workers hold each expert of each
/// MoE layer, with every worker's memory capacity in experts. Holders keep their order (the first is the primary).
/// </summary>
public sealed class PlacementDraft
{
    private readonly SortedDictionary<string, WorkerDescriptor> _workers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _held = new(StringComparer.Ordinal);
    private readonly List<string>[][] _holders;

    private PlacementDraft(ModelDescriptor model)
    {
        Model = model;
        _holders = new List<string>[model.MoeLayers.Length][];
        for (int li = 0; li < _holders.Length; li++)
        {
            _holders[li] = new List<string>[model.NumExperts];
            for (int e = 0; e < model.NumExperts; e++)
            {
                _holders[li][e] = [];
            }
        }
    }

    /// <summary>The model.</summary>
    public ModelDescriptor Model { get; }

    /// <summary>The workers of the draft, by id.</summary>
    public IReadOnlyCollection<WorkerDescriptor> Workers => _workers.Values;

    /// <summary>An empty draft over <paramref name="workers"/>.</summary>
    public static PlacementDraft Empty(ModelDescriptor model, IEnumerable<WorkerDescriptor> workers)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(workers);
        var d = new PlacementDraft(model);
        foreach (var w in workers)
        {
            d._workers[w.WorkerId] = w;
            d._held[w.WorkerId] = 0;
        }
        return d;
    }

    /// <summary>
    /// The draft of <paramref name="plan"/> restricted to <paramref name="workers"/>: holders that are not among them
    /// are dropped (their experts may become orphans), workers not in the plan start with no experts.
    /// </summary>
    public static PlacementDraft FromPlan(PlacementPlan plan, ModelDescriptor model, IEnumerable<WorkerDescriptor> workers)
    {
        ArgumentNullException.ThrowIfNull(plan);
        var d = Empty(model, workers);
        if (plan.Version == 0)
        {
            return d;
        }
        foreach (var layer in plan.Layers)
        {
            int li = Array.IndexOf(model.MoeLayers, layer.Layer);
            if (li < 0)
            {
                continue;
            }
            for (int e = 0; e < layer.Replicas.Length && e < model.NumExperts; e++)
            {
                foreach (int wi in layer.Replicas[e])
                {
                    string id = plan.Workers[wi].WorkerId;
                    if (d._workers.ContainsKey(id) && !d._holders[li][e].Contains(id))
                    {
                        d._holders[li][e].Add(id);
                        d._held[id]++;
                    }
                }
            }
        }
        return d;
    }

    /// <summary>Index of a MoE layer in <see cref="ModelDescriptor.MoeLayers"/>, or -1.</summary>
    public int LayerIndex(int layer) => Array.IndexOf(Model.MoeLayers, layer);

    /// <summary>True when the worker is in the draft.</summary>
    public bool Contains(string workerId) => _workers.ContainsKey(workerId);

    /// <summary>Experts the worker's memory holds (every expert of the model when it declared no capacity).</summary>
    public long Capacity(string workerId)
    {
        long total = (long)Model.MoeLayers.Length * Model.NumExperts;
        long mem = _workers[workerId].MemoryCapacityBytes;
        return mem <= 0 ? total : Math.Min(total, mem / Math.Max(1, Model.ExpertBytes));
    }

    /// <summary>Experts the worker holds in the draft.</summary>
    public int Held(string workerId) => _held[workerId];

    /// <summary>True when the worker has room for one more expert.</summary>
    public bool HasRoom(string workerId) => Held(workerId) < Capacity(workerId);

    /// <summary>Holders of an expert (layer index, not layer id), primary first.</summary>
    public IReadOnlyList<string> HoldersOf(int layerIndex, int expert) => _holders[layerIndex][expert];

    /// <summary>Experts the worker holds in one layer.</summary>
    public int HeldInLayer(int layerIndex, string workerId) => _holders[layerIndex].Count(h => h.Contains(workerId));

    /// <summary>Adds a copy (no capacity check: callers check <see cref="HasRoom"/>); false when already held.</summary>
    public bool Add(int layerIndex, int expert, string workerId)
    {
        var h = _holders[layerIndex][expert];
        if (h.Contains(workerId))
        {
            return false;
        }
        h.Add(workerId);
        _held[workerId]++;
        return true;
    }

    /// <summary>Removes a copy; false when not held.</summary>
    public bool Remove(int layerIndex, int expert, string workerId)
    {
        if (!_holders[layerIndex][expert].Remove(workerId))
        {
            return false;
        }
        _held[workerId]--;
        return true;
    }

    /// <summary>Moves a copy from one worker to another, keeping its position among the holders.</summary>
    public void Move(int layerIndex, int expert, string from, string to)
    {
        var h = _holders[layerIndex][expert];
        int i = h.IndexOf(from);
        if (i < 0 || h.Contains(to))
        {
            throw new InvalidOperationException($"cannot move L{Model.MoeLayers[layerIndex]}.E{expert} from {from} to {to}");
        }
        h[i] = to;
        _held[from]--;
        _held[to]++;
    }

    /// <summary>Experts without any holder.</summary>
    public IEnumerable<ExpertKey> Orphans()
    {
        for (int li = 0; li < _holders.Length; li++)
        {
            for (int e = 0; e < Model.NumExperts; e++)
            {
                if (_holders[li][e].Count == 0)
                {
                    yield return new ExpertKey(Model.MoeLayers[li], e);
                }
            }
        }
    }

    /// <summary>Every (expert, worker) copy.</summary>
    public IEnumerable<(ExpertKey Key, string WorkerId)> Copies()
    {
        for (int li = 0; li < _holders.Length; li++)
        {
            for (int e = 0; e < Model.NumExperts; e++)
            {
                foreach (var w in _holders[li][e])
                {
                    yield return (new ExpertKey(Model.MoeLayers[li], e), w);
                }
            }
        }
    }

    /// <summary>The plan of this draft (workers ordered by id).</summary>
    public PlacementPlan ToPlan(long version, long createdUnixMs)
    {
        var workers = _workers.Values.ToArray();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < workers.Length; i++)
        {
            index[workers[i].WorkerId] = i;
        }
        var layers = new LayerPlacement[Model.MoeLayers.Length];
        for (int li = 0; li < layers.Length; li++)
        {
            layers[li] = new LayerPlacement(Model.MoeLayers[li], [.. _holders[li].Select(h => h.Select(id => index[id]).ToArray())]);
        }
        return new PlacementPlan(version, Model, workers, layers, createdUnixMs);
    }

    /// <summary>
    /// The lowest-filled worker (held ÷ capacity, compared exactly; ties to fewer held, then the lower id) among
    /// <paramref name="candidates"/> that has room and passes <paramref name="accept"/>, or null.
    /// </summary>
    public string? LeastFilled(IEnumerable<string> candidates, Func<string, bool> accept)
    {
        string? best = null;
        foreach (var w in candidates)
        {
            if (!HasRoom(w) || !accept(w))
            {
                continue;
            }
            if (best is null || Fill(w, best) < 0)
            {
                best = w;
            }
        }
        return best;
    }

    /// <summary>Compares fill ratios exactly (negative when <paramref name="a"/> is less filled); ties by held, then id.</summary>
    public int Fill(string a, string b)
    {
        var lhs = (Int128)Held(a) * Capacity(b);
        var rhs = (Int128)Held(b) * Capacity(a);
        if (lhs != rhs)
        {
            return lhs < rhs ? -1 : 1;
        }
        int c = Held(a).CompareTo(Held(b));
        return c != 0 ? c : string.CompareOrdinal(a, b);
    }
}
