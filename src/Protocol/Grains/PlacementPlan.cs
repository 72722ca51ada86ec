using Distributed.Protocol.Contracts;
using MessagePack;

namespace Distributed.Protocol.Grains;

/// <summary>Which workers hold each expert of one MoE layer.</summary>
/// <param name="Layer">Decoder layer index.</param>
/// <param name="Replicas"><c>Replicas[e]</c> = indices into <see cref="PlacementPlan.Workers"/> holding expert e
/// (empty when unassigned). The first entry is the primary.</param>
[GenerateSerializer, Immutable, Alias("distributed.LayerPlacement")]
[MessagePackObject]
public sealed record LayerPlacement(
    [property: Id(0), Key(0)] int Layer,
    [property: Id(1), Key(1)] int[][] Replicas);

/// <summary>
/// A versioned placement plan: for every MoE layer, which worker(s) hold each expert. Versions only grow; a
/// coordinator routes with one version and workers refuse any other.
/// </summary>
/// <param name="Version">Plan version (1, 2, ...; 0 = no plan).</param>
/// <param name="Model">The model every worker in the plan serves.</param>
/// <param name="Workers">The workers, ordered by id.</param>
/// <param name="Layers">One entry per MoE layer, ascending.</param>
/// <param name="CreatedUnixMs">When the plan was built.</param>
[GenerateSerializer, Immutable, Alias("distributed.PlacementPlan")]
[MessagePackObject]
public sealed record PlacementPlan(
    [property: Id(0), Key(0)] long Version,
    [property: Id(1), Key(1)] ModelDescriptor? Model,
    [property: Id(2), Key(2)] WorkerDescriptor[] Workers,
    [property: Id(3), Key(3)] LayerPlacement[] Layers,
    [property: Id(4), Key(4)] long CreatedUnixMs)
{
    /// <summary>The empty plan (version 0).</summary>
    public static PlacementPlan Empty { get; } = new(0, null, [], [], 0);

    /// <summary>True when every expert of every MoE layer has at least one worker.</summary>
    [IgnoreMember]
    public bool CoversAllExperts => Model is not null
        && Layers.Length == Model.MoeLayers.Length
        && Layers.All(l => l.Replicas.Length == Model.NumExperts && l.Replicas.All(r => r.Length > 0));

    /// <summary>Index of <paramref name="workerId"/> in <see cref="Workers"/>, or -1.</summary>
    public int IndexOf(string workerId) => Array.FindIndex(Workers, w => w.WorkerId == workerId);

    /// <summary>The experts assigned to worker <paramref name="workerIndex"/>.</summary>
    public ShardManifest ShardOf(int workerIndex)
    {
        if (workerIndex < 0)
        {
            return ShardManifest.Empty;
        }
        var keys = new List<ExpertKey>();
        foreach (var layer in Layers)
        {
            for (int e = 0; e < layer.Replicas.Length; e++)
            {
                if (Array.IndexOf(layer.Replicas[e], workerIndex) >= 0)
                {
                    keys.Add(new ExpertKey(layer.Layer, e));
                }
            }
        }
        return new ShardManifest(keys);
    }

    /// <summary>Checks indices and shapes (a plan read from storage or the network is not trusted).</summary>
    /// <exception cref="FormatException">The plan is inconsistent; the message names the field.</exception>
    public void Validate()
    {
        if (Version < 0)
        {
            throw new FormatException($"PlacementPlan.Version {Version} is negative");
        }
        if (Version == 0)
        {
            return;
        }
        if (Model is null)
        {
            throw new FormatException("PlacementPlan.Model is missing");
        }
        Model.Validate();
        if (Workers is null || Layers is null)
        {
            throw new FormatException("PlacementPlan.Workers/Layers is missing");
        }
        foreach (var layer in Layers)
        {
            if (!Model.IsMoeLayer(layer.Layer))
            {
                throw new FormatException($"PlacementPlan.Layers: layer {layer.Layer} is not a MoE layer");
            }
            if (layer.Replicas is null || layer.Replicas.Length != Model.NumExperts)
            {
                throw new FormatException($"PlacementPlan.Layers[{layer.Layer}].Replicas must have {Model.NumExperts} entries");
            }
            foreach (var replicas in layer.Replicas)
            {
                if (replicas is null || replicas.Any(i => i < 0 || i >= Workers.Length))
                {
                    throw new FormatException($"PlacementPlan.Layers[{layer.Layer}].Replicas names a worker outside [0, {Workers.Length})");
                }
            }
        }
    }
}

/// <summary>The plan plus which of its workers have loaded their shard for it, and the staged next plan if a change is under way.</summary>
/// <param name="Plan">The active (committed) plan coordinators route with.</param>
/// <param name="ReadyWorkers">Ids of the plan's workers that serve <c>Plan.Version</c>.</param>
/// <param name="Generation">Bumped on every change of plan or readiness (for change waits).</param>
/// <param name="Staged">The next plan while its workers load and warm their new experts, else null. Workers accept
/// requests routed with either version until the change is committed and the previous version retired.</param>
/// <param name="StagedReady">Ids of the staged plan's workers that hold their staged shard.</param>
/// <param name="Problem">Why the active plan does not serve every expert (e.g. experts that no live worker has room
/// for), or null.</param>
[GenerateSerializer, Immutable, Alias("distributed.PlacementSnapshot")]
public sealed record PlacementSnapshot(
    [property: Id(0)] PlacementPlan Plan,
    [property: Id(1)] string[] ReadyWorkers,
    [property: Id(2)] long Generation,
    [property: Id(3)] PlacementPlan? Staged = null,
    [property: Id(4)] string[]? StagedReady = null,
    [property: Id(5)] string? Problem = null)
{
    [NonSerialized]
    private bool? _isServing;

    /// <summary>True when the plan covers every expert and every worker holding experts in it serves its shard
    /// (workers listed with no experts, e.g. drained ones, do not count).</summary>
    public bool IsServing => _isServing ??= Plan.CoversAllExperts && HoldingWorkers(Plan).All(ReadyWorkers.Contains);

    private static IEnumerable<string> HoldingWorkers(PlacementPlan plan)
    {
        var holds = new bool[plan.Workers.Length];
        foreach (var layer in plan.Layers)
        {
            foreach (var replicas in layer.Replicas)
            {
                foreach (int w in replicas)
                {
                    holds[w] = true;
                }
            }
        }
        return plan.Workers.Where((_, i) => holds[i]).Select(w => w.WorkerId);
    }
}
