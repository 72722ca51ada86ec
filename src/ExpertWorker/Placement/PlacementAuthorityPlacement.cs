using Orleans.Placement;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace Distributed.ExpertWorker.Placement;

/// <summary>Places the placement grain on the cluster's most stable silo.</summary>
[GenerateSerializer, Immutable, Alias("distributed.PlacementAuthorityStrategy")]
public sealed class PlacementAuthorityStrategy : PlacementStrategy
{
    /// <summary>The strategy instance.</summary>
    public static PlacementAuthorityStrategy Instance { get; } = new();
}

/// <summary>Marks a grain class as placed by <see cref="PlacementAuthorityStrategy"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class PlacementAuthorityAttribute() : PlacementAttribute(PlacementAuthorityStrategy.Instance);

/// <summary>
/// Picks the silo advertising <see cref="PrimaryKey"/> (the localhost-clustering primary, whose loss ends a development
/// cluster anyway), else the oldest compatible silo (lowest generation, then address). Keeping the placement authority
/// off the workers most likely to be scaled away or killed means a lost worker never takes the plan's keeper with it.
/// </summary>
public sealed class PlacementAuthorityDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    /// <summary>Silo metadata key set to <c>1</c> on the localhost-clustering primary silo.</summary>
    public const string PrimaryKey = "expert-cluster-primary";

    /// <inheritdoc />
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target);
        if (silos.Length == 0)
        {
            throw new OrleansException("no compatible silo for the placement grain");
        }
        foreach (var silo in silos)
        {
            if (metadata.GetSiloMetadata(silo).Metadata.TryGetValue(PrimaryKey, out var v) && v == "1")
            {
                return Task.FromResult(silo);
            }
        }
        return Task.FromResult(silos.OrderBy(s => s.Generation).ThenBy(s => s.ToParsableString(), StringComparer.Ordinal).First());
    }
}
