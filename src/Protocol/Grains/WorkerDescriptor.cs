using Distributed.Protocol.Contracts;
using MessagePack;

namespace Distributed.Protocol.Grains;

/// <summary>A worker as it registers with the placement grain (and as the persisted plan records it).</summary>
/// <param name="WorkerId">Stable worker id, unique in the cluster (also the key of its <see cref="IExpertShardGrain"/>).</param>
/// <param name="GrpcEndpoint">Data-plane address, e.g. <c>http://127.0.0.1:5123</c> (or <c>unix:/path</c>).</param>
/// <param name="SiloAddress">The worker's Orleans silo (parsable form), used to drop it when the silo leaves.</param>
/// <param name="HostId">Identity of the worker's machine; equal ids allow the shared-memory transport.</param>
/// <param name="MemoryCapacityBytes">Bytes of expert weights the worker may hold.</param>
/// <param name="Model">The model the worker opened.</param>
[GenerateSerializer, Immutable, Alias("distributed.WorkerDescriptor")]
[MessagePackObject]
public sealed record WorkerDescriptor(
    [property: Id(0), Key(0)] string WorkerId,
    [property: Id(1), Key(1)] string GrpcEndpoint,
    [property: Id(2), Key(2)] string SiloAddress,
    [property: Id(3), Key(3)] string HostId,
    [property: Id(4), Key(4)] long MemoryCapacityBytes,
    [property: Id(5), Key(5)] ModelDescriptor Model);
