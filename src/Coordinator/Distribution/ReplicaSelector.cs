namespace Distributed.Coordinator.Distribution;

/// <summary>Rows [<paramref name="FirstRow"/>, +<paramref name="Rows"/>) of a dispatch's grouped order, all routed to <paramref name="Expert"/>.</summary>
public readonly record struct RowSlice(int Expert, int FirstRow, int Rows);

/// <summary>
/// Chooses, for every slice of a dispatch, the worker(s) that compute it under a placement table:
/// <list type="bullet">
/// <item>only holders not suspected (<see cref="WorkerSuspicion"/>); when every holder is suspected, the primary (the
/// retry path then asks for re-placement);</item>
/// <item>one healthy holder: it; several: the less loaded of two random ones (power of two choices on rows
/// outstanding plus rows already given to it in this dispatch);</item>
/// <item>a slice of at least <see cref="DistributionOptions.SplitRows"/> rows with several healthy holders is cut into
/// contiguous pieces (each at least half of SplitRows) over the least loaded ones (ties by worker index).</item>
/// </list>
/// Which worker computes a row never changes its result (the workers' kernels are batch invariant), so the choice is
/// free to balance load.
/// </summary>
/// <param name="splitRows">Rows from which a replicated expert's slice is split (<see cref="DistributionOptions.SplitRows"/>).</param>
/// <param name="suspicion">Workers not to choose.</param>
/// <param name="outstandingRows">Rows in flight at a worker (by worker id), the load measure.</param>
/// <param name="random">Source of the two random choices.</param>
public sealed class ReplicaSelector(int splitRows, WorkerSuspicion suspicion, Func<string, long> outstandingRows, Random random)
{
    /// <summary>
    /// Assigns <paramref name="slices"/> of MoE layer <paramref name="layer"/> to workers of <paramref name="table"/>:
    /// worker index → its slices, in the order they were assigned.
    /// </summary>
    /// <exception cref="ExpertDispatchException">FailedPrecondition: an expert has no holder in the table.</exception>
    public SortedDictionary<int, List<RowSlice>> Assign(ExpertPlacementTable table, int layer, IReadOnlyList<RowSlice> slices)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(slices);
        var byWorker = new SortedDictionary<int, List<RowSlice>>();
        var added = new Dictionary<int, long>();
        long LoadOf(int w) => outstandingRows(table.Workers[w].WorkerId) + added.GetValueOrDefault(w);
        void Add(int w, RowSlice s)
        {
            if (!byWorker.TryGetValue(w, out var list))
            {
                byWorker[w] = list = [];
            }
            list.Add(s);
            added[w] = added.GetValueOrDefault(w) + s.Rows;
        }
        foreach (var slice in slices)
        {
            var owners = table.OwnersOf(layer, slice.Expert);
            if (owners.IsEmpty)
            {
                throw new ExpertDispatchException(Grpc.Core.StatusCode.FailedPrecondition,
                    $"expert {slice.Expert} of layer {layer} has no worker in placement plan {table.Version}", layer: layer);
            }
            var healthy = new List<int>(owners.Length);
            foreach (int w in owners)
            {
                if (!suspicion.IsSuspect(table, w))
                {
                    healthy.Add(w);
                }
            }
            if (healthy.Count == 0)
            {
                healthy.Add(owners[0]);
            }
            int pieces = healthy.Count == 1 || slice.Rows < splitRows ? 1 : Math.Min(healthy.Count, slice.Rows / Math.Max(1, splitRows / 2));
            if (pieces <= 1)
            {
                int pick = healthy[0];
                if (healthy.Count > 1)
                {
                    int a = random.Next(healthy.Count);
                    int b = (a + 1 + random.Next(healthy.Count - 1)) % healthy.Count;
                    pick = LoadOf(healthy[b]) < LoadOf(healthy[a]) ? healthy[b] : healthy[a];
                }
                Add(pick, slice);
                continue;
            }
            var chosen = healthy.OrderBy(LoadOf).ThenBy(w => w).Take(pieces).ToArray();
            int first = slice.FirstRow;
            for (int i = 0; i < chosen.Length; i++)
            {
                int n = slice.Rows / chosen.Length + (i < slice.Rows % chosen.Length ? 1 : 0);
                Add(chosen[i], new RowSlice(slice.Expert, first, n));
                first += n;
            }
        }
        return byWorker;
    }
}
