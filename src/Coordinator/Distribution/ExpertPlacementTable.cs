using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Grpc;

namespace Distributed.Coordinator.Distribution;

/// <summary>A worker's data-plane address.</summary>
/// <param name="WorkerId">Worker id.</param>
/// <param name="Endpoint"><c>http://host:port</c> or <c>unix:/path</c>.</param>
public sealed record WorkerEndpoint(string WorkerId, string Endpoint);

/// <summary>
/// One placement-plan version as the dispatcher uses it: for each MoE layer and expert, the workers holding it.
/// Immutable; a new plan means a new table.
/// </summary>
public sealed class ExpertPlacementTable
{
    private readonly int[][][] _owners; // [layer][expert] -> indices into Workers (empty arrays for non-MoE layers)

    private ExpertPlacementTable(ulong version, ModelDescriptor model, WorkerEndpoint[] workers, int[][][] owners)
    {
        Version = version;
        Model = model;
        Workers = workers;
        _owners = owners;
        CoversAllExperts = model.MoeLayers.All(l => owners[l].Length == model.NumExperts && owners[l].All(o => o.Length > 0));
    }

    /// <summary>Plan version requests carry.</summary>
    public ulong Version { get; }

    /// <summary>The model.</summary>
    public ModelDescriptor Model { get; }

    /// <summary>Workers referenced by the table.</summary>
    public IReadOnlyList<WorkerEndpoint> Workers { get; }

    /// <summary>True when every expert of every MoE layer has a worker.</summary>
    public bool CoversAllExperts { get; }

    /// <summary>Workers holding (layer, expert) (primary first); empty when unassigned.</summary>
    public ReadOnlySpan<int> OwnersOf(int layer, int expert)
        => (uint)layer < (uint)_owners.Length && (uint)expert < (uint)_owners[layer].Length ? _owners[layer][expert] : [];

    /// <summary>The table of a placement plan.</summary>
    /// <exception cref="FormatException">The plan is inconsistent.</exception>
    public static ExpertPlacementTable FromPlan(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        plan.Validate();
        var model = plan.Model ?? throw new FormatException("placement plan has no model");
        var owners = Empty(model);
        foreach (var layer in plan.Layers)
        {
            owners[layer.Layer] = [.. layer.Replicas.Select(r => r.ToArray())];
        }
        return new ExpertPlacementTable((ulong)plan.Version, model,
            [.. plan.Workers.Select(w => new WorkerEndpoint(w.WorkerId, w.GrpcEndpoint))], owners);
    }

    /// <summary>
    /// The table implied by the shards workers reported in their handshakes (static placement: <c>--workers</c>).
    /// </summary>
    /// <exception cref="ArgumentException">The workers disagree on the plan version or a shard names a non-MoE layer or bad expert.</exception>
    public static ExpertPlacementTable FromHandshakes(ModelDescriptor model, IReadOnlyList<(WorkerEndpoint Worker, HelloReply Hello)> workers)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(workers);
        var versions = workers.Select(w => w.Hello.PlanVersion).Distinct().ToArray();
        if (versions.Length > 1)
        {
            throw new ArgumentException($"workers serve different plan versions: {string.Join(", ", workers.Select(w => $"{w.Worker.WorkerId}=v{w.Hello.PlanVersion}"))}");
        }
        var lists = new List<int>[model.NumLayers][];
        for (int w = 0; w < workers.Count; w++)
        {
            foreach (var shard in workers[w].Hello.Shards)
            {
                if (shard.Layer >= (uint)model.NumLayers || !model.IsMoeLayer((int)shard.Layer))
                {
                    throw new ArgumentException($"worker {workers[w].Worker.WorkerId} reports layer {shard.Layer}, not a MoE layer");
                }
                var layer = lists[shard.Layer] ??= new List<int>[model.NumExperts];
                foreach (uint e in shard.Experts)
                {
                    if (e >= (uint)model.NumExperts)
                    {
                        throw new ArgumentException($"worker {workers[w].Worker.WorkerId} reports expert {e} of layer {shard.Layer}, out of range");
                    }
                    (layer[e] ??= []).Add(w);
                }
            }
        }
        var owners = Empty(model);
        foreach (int l in model.MoeLayers)
        {
            owners[l] = lists[l] is null ? [.. Enumerable.Range(0, model.NumExperts).Select(_ => Array.Empty<int>())] : [.. lists[l].Select(o => o?.ToArray() ?? [])];
        }
        return new ExpertPlacementTable(versions.Length == 0 ? 0 : versions[0], model, [.. workers.Select(w => w.Worker)], owners);
    }

    private static int[][][] Empty(ModelDescriptor model)
    {
        var owners = new int[model.NumLayers][][];
        for (int l = 0; l < owners.Length; l++)
        {
            owners[l] = [];
        }
        return owners;
    }
}
