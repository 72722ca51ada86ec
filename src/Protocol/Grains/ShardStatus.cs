namespace Distributed.Protocol.Grains;

/// <summary>Lifecycle of a worker's shard.</summary>
public enum ShardState
{
    /// <summary>No experts held.</summary>
    Empty = 0,
    /// <summary>Loading slices from the checkpoint.</summary>
    Loading = 1,
    /// <summary>Running each new expert once so the first real request pays no first-touch cost.</summary>
    Warming = 2,
    /// <summary>Serving its plan version.</summary>
    Serving = 3,
    /// <summary>Loading failed; see the error.</summary>
    Failed = 4,
    /// <summary>Serving its plan version and holding every expert of a staged next version (see <see cref="ShardStatus.StagedVersion"/>).</summary>
    Staged = 5,
}

/// <summary>What a worker's shard holds.</summary>
/// <param name="WorkerId">The worker.</param>
/// <param name="PlanVersion">Plan version the shard serves (or is moving to).</param>
/// <param name="State">Lifecycle state.</param>
/// <param name="Experts">Experts held.</param>
/// <param name="ResidentBytes">Backend memory of those experts.</param>
/// <param name="Error">Why loading failed, or null.</param>
/// <param name="StagedVersion">Plan version staged next to <paramref name="PlanVersion"/> (its experts loaded and warm,
/// requests routed with it accepted), or 0.</param>
[GenerateSerializer, Immutable, Alias("distributed.ShardStatus")]
public sealed record ShardStatus(
    [property: Id(0)] string WorkerId,
    [property: Id(1)] long PlanVersion,
    [property: Id(2)] ShardState State,
    [property: Id(3)] int Experts,
    [property: Id(4)] long ResidentBytes,
    [property: Id(5)] string? Error,
    [property: Id(6)] long StagedVersion = 0);
