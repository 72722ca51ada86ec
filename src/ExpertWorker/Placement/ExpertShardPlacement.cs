using Microsoft.Extensions.Options;
using Orleans.Placement;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace Distributed.ExpertWorker.Placement;

/// <summary>Places an expert-shard grain (key = worker id) on the silo of that worker.</summary>
[GenerateSerializer, Immutable, Alias("distributed.ExpertShardPlacementStrategy")]
public sealed class ExpertShardPlacementStrategy : PlacementStrategy
{
    /// <summary>The strategy instance.</summary>
    public static ExpertShardPlacementStrategy Instance { get; } = new();
}

/// <summary>Marks a grain class as placed by <see cref="ExpertShardPlacementStrategy"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class ExpertShardPlacementAttribute() : PlacementAttribute(ExpertShardPlacementStrategy.Instance);

/// <summary>
/// Finds the silo whose metadata <see cref="WorkerIdKey"/> equals the grain key. The local silo is checked first (a
/// worker's own agent is the usual first caller), then the metadata of every compatible silo.
/// </summary>
public sealed class ExpertShardPlacementDirector(
    ILocalSiloDetails localSilo, IOptions<SiloMetadata> localMetadata, ISiloMetadataCache metadata) : IPlacementDirector
{
    /// <summary>Silo metadata key holding the worker id.</summary>
    public const string WorkerIdKey = "expert-worker-id";

    /// <summary>Silo metadata key holding the data-plane endpoint.</summary>
    public const string GrpcEndpointKey = "expert-grpc-endpoint";

    /// <summary>Silo metadata key holding the memory capacity in bytes.</summary>
    public const string CapacityKey = "expert-capacity-bytes";

    /// <inheritdoc />
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        string workerId = target.GrainIdentity.Key.ToString()!;
        var silos = context.GetCompatibleSilos(target);
        if (localMetadata.Value.Metadata.TryGetValue(WorkerIdKey, out var localId) && localId == workerId
            && silos.Contains(localSilo.SiloAddress))
        {
            return Task.FromResult(localSilo.SiloAddress);
        }
        foreach (var silo in silos)
        {
            if (Matches(silo, workerId))
            {
                return Task.FromResult(silo);
            }
        }
        throw new OrleansException($"no live silo advertises expert worker '{workerId}' (metadata key {WorkerIdKey})");
    }

    private bool Matches(SiloAddress silo, string workerId)
        => metadata.GetSiloMetadata(silo).Metadata.TryGetValue(WorkerIdKey, out var id) && id == workerId;
}
