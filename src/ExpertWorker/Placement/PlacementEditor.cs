using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Placement;

/// <summary>
/// Plan edits (pure functions over a <see cref="PlacementDraft"/>): repair orphans, spread experts onto joining workers,
/// drain a worker, add or remove replicas, and an EPLB-style rebalance from measured load. Every edit respects each
/// worker's memory capacity and moves as few experts as it can; refusals leave the draft as a caller must discard.
/// </summary>
public static class PlacementEditor
{
    /// <summary>
    /// Gives every expert without a holder to the least-filled eligible worker with room (layer by layer, expert by
    /// expert). Returns the experts nobody had room for.
    /// </summary>
    public static List<ExpertKey> Repair(PlacementDraft draft, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        var unplaced = new List<ExpertKey>();
        foreach (var key in draft.Orphans().ToList())
        {
            int li = draft.LayerIndex(key.Layer);
            var w = draft.LeastFilled(Eligible(draft, excluded), _ => true);
            if (w is null)
            {
                unplaced.Add(key);
                continue;
            }
            draft.Add(li, key.Expert, w);
        }
        return unplaced;
    }

    /// <summary>
    /// Adds copies of every expert held by fewer than <paramref name="minCopies"/> workers (capped at the number of
    /// eligible workers) on the least-filled eligible workers with room. Returns copies added.
    /// </summary>
    public static int TopUp(PlacementDraft draft, int minCopies, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        var eligible = Eligible(draft, excluded).ToList();
        int want = Math.Min(minCopies, eligible.Count), added = 0;
        for (int li = 0; li < draft.Model.MoeLayers.Length; li++)
        {
            for (int e = 0; e < draft.Model.NumExperts; e++)
            {
                int layer = li, expert = e;
                while (draft.HoldersOf(li, e).Count is > 0 and var n && n < want)
                {
                    var w = draft.LeastFilled(eligible, x => !draft.HoldersOf(layer, expert).Contains(x));
                    if (w is null)
                    {
                        break;
                    }
                    draft.Add(li, e, w);
                    added++;
                }
            }
        }
        return added;
    }

    /// <summary>
    /// Moves experts onto <paramref name="joiners"/> so that, in every layer, each eligible worker holds about the same
    /// number of expert copies: while a joiner holds fewer than <c>floor(copies / workers)</c> of a layer, it takes one
    /// expert from the worker holding the most of that layer (highest expert id first, so the donors keep their low ids).
    /// </summary>
    /// <returns>Expert copies moved.</returns>
    public static int SpreadTo(PlacementDraft draft, IReadOnlyCollection<string> joiners, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        ArgumentNullException.ThrowIfNull(joiners);
        var eligible = Eligible(draft, excluded).ToList();
        if (eligible.Count == 0)
        {
            return 0;
        }
        int moved = 0;
        for (int li = 0; li < draft.Model.MoeLayers.Length; li++)
        {
            int copies = 0;
            for (int e = 0; e < draft.Model.NumExperts; e++)
            {
                copies += draft.HoldersOf(li, e).Count;
            }
            int target = copies / eligible.Count;
            foreach (var j in joiners.Where(eligible.Contains).Order(StringComparer.Ordinal))
            {
                while (draft.HeldInLayer(li, j) < target && draft.HasRoom(j))
                {
                    int layer = li;
                    string? donor = eligible.Where(w => w != j)
                        .OrderByDescending(w => draft.HeldInLayer(layer, w)).ThenBy(w => w, StringComparer.Ordinal)
                        .FirstOrDefault(w => draft.HeldInLayer(layer, w) > target);
                    if (donor is null)
                    {
                        break;
                    }
                    int expert = -1;
                    for (int e = draft.Model.NumExperts - 1; e >= 0; e--)
                    {
                        var h = draft.HoldersOf(li, e);
                        if (h.Contains(donor) && !h.Contains(j))
                        {
                            expert = e;
                            break;
                        }
                    }
                    if (expert < 0)
                    {
                        break;
                    }
                    draft.Move(li, expert, donor, j);
                    moved++;
                }
            }
        }
        return moved;
    }

    /// <summary>
    /// Moves every copy held by <paramref name="workerId"/> to the least-filled other eligible worker with room that
    /// does not hold it; a copy with no such target is dropped when another copy exists. Returns an error (the draft is
    /// then unusable) when some expert would be left without a holder.
    /// </summary>
    public static PlanChangeError? Drain(PlacementDraft draft, string workerId, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        var others = Eligible(draft, excluded).Where(w => w != workerId).ToList();
        var stuck = new List<ExpertKey>();
        for (int li = 0; li < draft.Model.MoeLayers.Length; li++)
        {
            for (int e = 0; e < draft.Model.NumExperts; e++)
            {
                var holders = draft.HoldersOf(li, e);
                if (!holders.Contains(workerId))
                {
                    continue;
                }
                int layer = li, expert = e;
                var target = draft.LeastFilled(others, w => !draft.HoldersOf(layer, expert).Contains(w));
                if (target is not null)
                {
                    draft.Move(li, e, workerId, target);
                }
                else if (holders.Count > 1)
                {
                    draft.Remove(li, e, workerId);
                }
                else
                {
                    stuck.Add(new ExpertKey(draft.Model.MoeLayers[li], e));
                }
            }
        }
        if (stuck.Count == 0)
        {
            return null;
        }
        return others.Count == 0
            ? new PlanChangeError(PlanChangeError.LastHolder,
                $"worker '{workerId}' is the last holder of {Describe(stuck)}: no other active worker could take them")
            : new PlanChangeError(PlanChangeError.InsufficientMemory,
                $"worker '{workerId}' is the last holder of {Describe(stuck)} and the other {others.Count} active workers have no room for them");
    }

    /// <summary>Applies replica changes in order; the first invalid one is returned as the error (the draft is then unusable).</summary>
    public static PlanChangeError? ChangeReplicas(PlacementDraft draft, IReadOnlyList<ReplicaChange> changes, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        ArgumentNullException.ThrowIfNull(changes);
        var model = draft.Model;
        for (int i = 0; i < changes.Count; i++)
        {
            var c = changes[i];
            string field = $"{(c.Add ? "add" : "remove")}[{i}]";
            if (c is null)
            {
                return new PlanChangeError(PlanChangeError.InvalidArgument, $"{field} is null", field);
            }
            int li = draft.LayerIndex(c.Layer);
            if (li < 0)
            {
                return new PlanChangeError(PlanChangeError.UnknownExpert,
                    $"layer {c.Layer} is not a MoE layer (MoE layers: {string.Join(", ", model.MoeLayers)})", field + ".layer");
            }
            if (c.Expert < 0 || c.Expert >= model.NumExperts)
            {
                return new PlanChangeError(PlanChangeError.UnknownExpert,
                    $"expert {c.Expert} of layer {c.Layer} is out of range [0, {model.NumExperts})", field + ".expert");
            }
            var key = new ExpertKey(c.Layer, c.Expert);
            var holders = draft.HoldersOf(li, c.Expert);
            if (c.WorkerId is { } w && !draft.Contains(w))
            {
                return new PlanChangeError(PlanChangeError.UnknownWorker, $"worker '{w}' is not registered", field + ".worker");
            }
            if (c.Add)
            {
                string? target = c.WorkerId;
                if (target is not null)
                {
                    if (excluded.Contains(target))
                    {
                        return new PlanChangeError(PlanChangeError.InvalidArgument, $"worker '{target}' is draining or drained", field + ".worker");
                    }
                    if (holders.Contains(target))
                    {
                        return new PlanChangeError(PlanChangeError.InvalidArgument, $"worker '{target}' already holds {key}", field + ".worker");
                    }
                    if (!draft.HasRoom(target))
                    {
                        return new PlanChangeError(PlanChangeError.InsufficientMemory,
                            $"worker '{target}' has no room for {key}: it holds {draft.Held(target)} experts and its memory fits {draft.Capacity(target)}", field);
                    }
                }
                else
                {
                    target = draft.LeastFilled(Eligible(draft, excluded), x => !holders.Contains(x));
                    if (target is null)
                    {
                        return new PlanChangeError(PlanChangeError.InsufficientMemory,
                            $"no active worker without a copy of {key} has room for another expert", field);
                    }
                }
                draft.Add(li, c.Expert, target);
            }
            else
            {
                if (holders.Count <= 1)
                {
                    return new PlanChangeError(PlanChangeError.LastHolder,
                        $"{key} has {holders.Count} holder{(holders.Count == 1 ? $" ('{holders[0]}')" : "s")}; removing it would leave none", field);
                }
                string? victim = c.WorkerId;
                if (victim is not null && !holders.Contains(victim))
                {
                    return new PlanChangeError(PlanChangeError.InvalidArgument, $"worker '{victim}' does not hold {key}", field + ".worker");
                }
                victim ??= holders.OrderByDescending(x => x, Comparer<string>.Create((a, b) => draft.Fill(a, b))).First();
                draft.Remove(li, c.Expert, victim);
            }
        }
        return null;
    }

    /// <summary>
    /// EPLB-style placement from measured load, per MoE layer: each expert gets one copy, then the extra replicas go one
    /// at a time to the expert with the highest load per copy; copies are packed heaviest first onto the eligible worker
    /// with the least load in that layer that has room (a worker's per-layer slots are capped in proportion to its
    /// memory so that every layer fits), preferring a worker that already holds the expert on ties so that fewer
    /// experts move. Returns the new draft, or an error when memory cannot hold one copy of every expert.
    /// </summary>
    /// <param name="current">The active plan's draft (for the workers, their capacities and current holders).</param>
    /// <param name="load">Rows routed per expert per layer; a missing or all-zero layer counts as uniform.</param>
    /// <param name="extraReplicasPerLayer">Copies beyond one per expert, per layer; null = the number of eligible workers.</param>
    public static (PlacementDraft? Draft, PlanChangeError? Error) Rebalance(PlacementDraft current, IReadOnlyList<LayerLoad> load,
        int? extraReplicasPerLayer, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(current);
        ArgumentNullException.ThrowIfNull(load);
        var model = current.Model;
        int layers = model.MoeLayers.Length, experts = model.NumExperts;
        var eligible = Eligible(current, excluded).ToList();
        if (eligible.Count == 0)
        {
            return (null, new PlanChangeError(PlanChangeError.InsufficientMemory, "no active worker to place experts on"));
        }
        long slots = eligible.Sum(current.Capacity);
        if (slots < (long)layers * experts)
        {
            return (null, new PlanChangeError(PlanChangeError.InsufficientMemory,
                $"the {eligible.Count} active workers' memory holds {slots} experts, one copy of every expert needs {(long)layers * experts}"));
        }
        int extra = extraReplicasPerLayer ?? eligible.Count;
        if (extra < 0)
        {
            return (null, new PlanChangeError(PlanChangeError.InvalidArgument, $"extra replicas per layer {extra} is negative", "extra_replicas_per_layer"));
        }
        extra = (int)Math.Min(extra, Math.Min((slots - (long)layers * experts) / layers, (long)experts * (eligible.Count - 1)));

        var draft = PlacementDraft.Empty(model, current.Workers);
        var remaining = eligible.ToDictionary(w => w, current.Capacity, StringComparer.Ordinal);
        for (int li = 0; li < layers; li++)
        {
            var weights = LayerWeights(model, load, li);
            var replicas = Enumerable.Repeat(1, experts).ToArray();
            for (int k = 0; k < extra; k++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                {
                    if (replicas[e] < eligible.Count && (best < 0 || weights[e] * replicas[best] > weights[best] * replicas[e]))
                    {
                        best = e;
                    }
                }
                if (best < 0)
                {
                    break;
                }
                replicas[best]++;
            }
            int copies = replicas.Sum();
            long capLeft = remaining.Values.Sum();
            int layersLeft = layers - li;
            // Per-layer slots per worker: its share of what is left, so that later layers still fit.
            var quota = eligible.ToDictionary(w => w,
                w => layersLeft == 1 || capLeft == 0 ? (int)Math.Min(int.MaxValue, remaining[w])
                    : (int)Math.Min(remaining[w], (long)Math.Ceiling((double)copies * remaining[w] / capLeft)),
                StringComparer.Ordinal);
            var layerLoad = eligible.ToDictionary(w => w, _ => 0.0, StringComparer.Ordinal);
            var order = Enumerable.Range(0, experts).OrderByDescending(e => weights[e] / replicas[e]).ThenBy(e => e).ToArray();
            foreach (int e in order)
            {
                double share = weights[e] / replicas[e];
                var previous = current.HoldersOf(li, e);
                for (int r = 0; r < replicas[e]; r++)
                {
                    string? pick = null;
                    foreach (var w in eligible)
                    {
                        if (quota[w] <= 0 || draft.HoldersOf(li, e).Contains(w))
                        {
                            continue;
                        }
                        if (pick is null || Prefer(w, pick))
                        {
                            pick = w;
                        }
                    }
                    bool Prefer(string a, string b)
                    {
                        int c = layerLoad[a].CompareTo(layerLoad[b]);
                        if (c != 0)
                        {
                            return c < 0;
                        }
                        bool ha = previous.Contains(a), hb = previous.Contains(b);
                        if (ha != hb)
                        {
                            return ha;
                        }
                        int q = quota[b].CompareTo(quota[a]);
                        return q != 0 ? q < 0 : string.CompareOrdinal(a, b) < 0;
                    }
                    if (pick is null)
                    {
                        if (r == 0)
                        {
                            return (null, new PlanChangeError(PlanChangeError.InsufficientMemory,
                                $"no active worker has room left for L{model.MoeLayers[li]}.E{e}"));
                        }
                        break;
                    }
                    draft.Add(li, e, pick);
                    quota[pick]--;
                    remaining[pick]--;
                    layerLoad[pick] += share;
                }
            }
        }
        return (draft, null);
    }

    /// <summary>Predicted balance of <paramref name="draft"/> under <paramref name="load"/> over the eligible workers.</summary>
    public static BalanceReport Balance(PlacementDraft draft, IReadOnlyList<LayerLoad> load, ISet<string> excluded)
    {
        ArgumentNullException.ThrowIfNull(draft);
        var model = draft.Model;
        var eligible = Eligible(draft, excluded).ToList();
        var share = draft.Workers.ToDictionary(w => w.WorkerId, _ => 0.0, StringComparer.Ordinal);
        double sumRatio = 0, worst = 0, total = 0;
        for (int li = 0; li < model.MoeLayers.Length; li++)
        {
            var weights = LayerWeights(model, load, li);
            var perWorker = draft.Workers.ToDictionary(w => w.WorkerId, _ => 0.0, StringComparer.Ordinal);
            double layerTotal = 0;
            for (int e = 0; e < model.NumExperts; e++)
            {
                var h = draft.HoldersOf(li, e);
                layerTotal += weights[e];
                foreach (var w in h)
                {
                    perWorker[w] += weights[e] / h.Count;
                }
            }
            int n = Math.Max(1, eligible.Count);
            double mean = layerTotal / n;
            double ratio = mean <= 0 ? 1 : perWorker.Values.Max() / mean;
            sumRatio += ratio;
            worst = Math.Max(worst, ratio);
            foreach (var (w, v) in perWorker)
            {
                share[w] += v;
            }
            total += layerTotal;
        }
        foreach (var w in share.Keys.ToList())
        {
            share[w] = total <= 0 ? 0 : share[w] / total;
        }
        return new BalanceReport(model.MoeLayers.Length == 0 ? 1 : sumRatio / model.MoeLayers.Length, worst, share);
    }

    /// <summary>Expert copies in <paramref name="next"/> that <paramref name="previous"/> did not have (each one is a load).</summary>
    public static int CountLoads(PlacementDraft previous, PlacementDraft next)
    {
        var before = previous.Copies().ToHashSet();
        return next.Copies().Count(c => !before.Contains(c));
    }

    /// <summary>True when both drafts assign the same holders (in the same order) over the same workers.</summary>
    public static bool SameAssignment(PlacementDraft a, PlacementDraft b)
        => a.Workers.Select(w => w.WorkerId).SequenceEqual(b.Workers.Select(w => w.WorkerId)) && a.Copies().SequenceEqual(b.Copies());

    /// <summary>Up to four experts, then a count.</summary>
    public static string Describe(IReadOnlyCollection<ExpertKey> keys)
        => keys.Count <= 4 ? string.Join(", ", keys) : $"{string.Join(", ", keys.Take(4))} and {keys.Count - 4} more experts";

    private static IEnumerable<string> Eligible(PlacementDraft draft, ISet<string> excluded)
        => draft.Workers.Select(w => w.WorkerId).Where(w => !excluded.Contains(w));

    private static double[] LayerWeights(ModelDescriptor model, IReadOnlyList<LayerLoad> load, int layerIndex)
    {
        int layer = model.MoeLayers[layerIndex];
        var weights = new double[model.NumExperts];
        var l = load.FirstOrDefault(x => x.Layer == layer);
        if (l is not null && l.Tokens.Length == model.NumExperts && l.Tokens.Any(t => t > 0))
        {
            for (int e = 0; e < weights.Length; e++)
            {
                weights[e] = Math.Max(0, l.Tokens[e]);
            }
        }
        else
        {
            Array.Fill(weights, 1.0);
        }
        return weights;
    }
}
