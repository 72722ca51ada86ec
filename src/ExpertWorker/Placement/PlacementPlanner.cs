using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Placement;

/// <summary>
/// Builds placement plans (pure: same inputs, same plan). Experts are dealt layer by layer, expert by expert, each to
/// the worker(s) with the lowest fill ratio (experts held ÷ experts its memory fits), ties to fewer experts, then to the
/// lower worker id. With equal capacities this is a round robin, so every layer spreads evenly over the workers and
/// each MoE layer's dispatch reaches all of them at once; with unequal memory, bigger workers take proportionally more.
/// A worker never gets more experts than its memory holds; experts nobody can hold stay unassigned (the plan then does
/// not cover the model and coordinators refuse to use it).
/// </summary>
public static class PlacementPlanner
{
    /// <summary>Builds plan <paramref name="version"/> for <paramref name="workers"/>.</summary>
    /// <param name="replication">Copies of each expert (capped at the number of workers).</param>
    public static PlacementPlan Build(long version, ModelDescriptor model, IReadOnlyCollection<WorkerDescriptor> workers, int replication, long createdUnixMs)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(workers);
        ArgumentOutOfRangeException.ThrowIfLessThan(replication, 1);
        var ordered = workers.OrderBy(w => w.WorkerId, StringComparer.Ordinal).ToArray();
        int n = ordered.Length;
        long totalExperts = (long)model.MoeLayers.Length * model.NumExperts;
        var capacity = new long[n];
        for (int w = 0; w < n; w++)
        {
            long mem = ordered[w].MemoryCapacityBytes;
            capacity[w] = mem <= 0 ? totalExperts : Math.Min(totalExperts, mem / Math.Max(1, model.ExpertBytes));
        }
        var held = new long[n];
        int copies = Math.Min(replication, n);
        var layers = new LayerPlacement[model.MoeLayers.Length];
        var chosen = new List<int>(copies);
        for (int li = 0; li < model.MoeLayers.Length; li++)
        {
            var replicas = new int[model.NumExperts][];
            for (int e = 0; e < model.NumExperts; e++)
            {
                chosen.Clear();
                for (int c = 0; c < copies; c++)
                {
                    int best = -1;
                    for (int w = 0; w < n; w++)
                    {
                        if (held[w] >= capacity[w] || chosen.Contains(w))
                        {
                            continue;
                        }
                        if (best < 0 || Better(w, best, held, capacity))
                        {
                            best = w;
                        }
                    }
                    if (best < 0)
                    {
                        break;
                    }
                    chosen.Add(best);
                    held[best]++;
                }
                replicas[e] = [.. chosen];
            }
            layers[li] = new LayerPlacement(model.MoeLayers[li], replicas);
        }
        return new PlacementPlan(version, model, ordered, layers, createdUnixMs);
    }

    // fill(a) < fill(b) compared exactly as held[a]/cap[a] < held[b]/cap[b] via cross-multiplication (no rounding).
    private static bool Better(int a, int b, long[] held, long[] capacity)
    {
        var lhs = (Int128)held[a] * capacity[b];
        var rhs = (Int128)held[b] * capacity[a];
        if (lhs != rhs)
        {
            return lhs < rhs;
        }
        return held[a] < held[b];
    }
}
