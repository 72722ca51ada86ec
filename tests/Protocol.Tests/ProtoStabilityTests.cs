using Distributed.Protocol.Grpc;
using Google.Protobuf.Reflection;

namespace Distributed.Protocol.Tests;

/// <summary>Pins every field number and enum value of expert_worker.proto: a released number never changes.</summary>
public class ProtoStabilityTests
{
    public static TheoryData<string, string, int> Fields => new()
    {
        { "SharedRingOffer", "size_bytes", 2 }, { "SharedRingOffer", "host_id", 3 }, { "SharedRingOffer", "doorbell", 4 },
        { "SharedRingRendezvous", "socket_path", 1 }, { "SharedRingRendezvous", "nonce", 2 }, { "SharedRingRendezvous", "doorbell", 3 },
        { "HelloRequest", "protocol_major", 1 }, { "HelloRequest", "protocol_minor", 2 }, { "HelloRequest", "model_fingerprint", 3 },
        { "HelloRequest", "coordinator_id", 4 }, { "HelloRequest", "transports", 5 }, { "HelloRequest", "shared_ring", 6 },
        { "ExpertShard", "layer", 1 }, { "ExpertShard", "experts", 2 },
        { "HelloReply", "protocol_major", 1 }, { "HelloReply", "protocol_minor", 2 }, { "HelloReply", "model_fingerprint", 3 },
        { "HelloReply", "worker_id", 4 }, { "HelloReply", "shards", 5 }, { "HelloReply", "plan_version", 6 },
        { "HelloReply", "hidden_size", 7 }, { "HelloReply", "max_rows_per_dispatch", 8 }, { "HelloReply", "transport", 9 },
        { "HelloReply", "session_id", 10 }, { "HelloReply", "num_experts", 11 }, { "HelloReply", "max_message_bytes", 12 }, { "HelloReply", "kernel_numerics", 13 },
        { "HelloReply", "shared_ring", 14 }, { "HelloReply", "cluster_managed", 20 },
        { "HelloReply", "expert_activations", 21 },
        { "ExpertSegment", "expert", 1 }, { "ExpertSegment", "rows", 2 },
        { "SharedRows", "offset", 1 }, { "SharedRows", "length", 2 },
        { "ExpertRequest", "request_id", 1 }, { "ExpertRequest", "layer", 2 }, { "ExpertRequest", "plan_version", 3 },
        { "ExpertRequest", "segments", 4 }, { "ExpertRequest", "dtype", 5 }, { "ExpertRequest", "hidden_size", 6 },
        { "ExpertRequest", "rows", 7 }, { "ExpertRequest", "shared_rows", 8 }, { "ExpertRequest", "traceparent", 9 },
        { "ExpertRequest", "reply_dtype", 10 }, { "ExpertRequest", "payload", 15 },
        { "FieldViolation", "field", 1 }, { "FieldViolation", "description", 2 },
        { "ReplyStatus", "code", 1 }, { "ReplyStatus", "message", 2 }, { "ReplyStatus", "violations", 3 },
        { "WorkerTimings", "decode_nanos", 1 }, { "WorkerTimings", "compute_nanos", 2 }, { "WorkerTimings", "encode_nanos", 3 },
        { "ExpertReply", "request_id", 1 }, { "ExpertReply", "status", 2 }, { "ExpertReply", "dtype", 3 },
        { "ExpertReply", "rows", 4 }, { "ExpertReply", "hidden_size", 5 }, { "ExpertReply", "timings", 6 },
        { "ExpertReply", "shared_rows", 7 }, { "ExpertReply", "payload", 15 },
    };

    [Theory]
    [Trait("Category", "Unit")]
    [MemberData(nameof(Fields))]
    public void FieldNumber_IsPinned(string message, string field, int number)
    {
        var descriptor = ExpertWorkerReflection.Descriptor.MessageTypes.Single(m => m.Name == message);
        Assert.Equal(number, descriptor.FindFieldByName(field)?.FieldNumber);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void EveryField_IsPinned()
    {
        var pinned = Fields.Select(row => ((string)row[0], (string)row[1])).ToHashSet();
        var actual = ExpertWorkerReflection.Descriptor.MessageTypes
            .SelectMany(m => m.Fields.InDeclarationOrder().Select(f => (m.Name, f.Name)));
        Assert.All(actual, f => Assert.Contains(f, pinned));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void EnumValues_ArePinned()
    {
        EnumDescriptor Enum(string name) => ExpertWorkerReflection.Descriptor.EnumTypes.Single(e => e.Name == name);
        Assert.Equal(
            ["WIRE_DTYPE_UNSPECIFIED=0", "WIRE_DTYPE_BF16=1", "WIRE_DTYPE_FP32=2", "WIRE_DTYPE_FP8_E4M3=3"],
            Enum("WireDType").Values.Select(v => $"{v.Name}={v.Number}"));
        Assert.Equal(
            ["ROW_TRANSPORT_UNSPECIFIED=0", "ROW_TRANSPORT_INLINE=1", "ROW_TRANSPORT_SHARED_MEMORY_FD=3"],
            Enum("RowTransport").Values.Select(v => $"{v.Name}={v.Number}"));
    }

    /// <summary>Removed numbers and names stay reserved, so nobody gives them a new meaning that old peers would misread.</summary>
    [Fact]
    [Trait("Category", "Unit")]
    public void RemovedNumbers_StayReserved()
    {
        var offer = ExpertWorkerReflection.Descriptor.MessageTypes.Single(m => m.Name == "SharedRingOffer").ToProto();
        Assert.Contains(offer.ReservedRange, r => r.Start == 1 && r.End == 2);
        Assert.Contains("path", offer.ReservedName);
        var transport = ExpertWorkerReflection.Descriptor.EnumTypes.Single(e => e.Name == "RowTransport").ToProto();
        Assert.Contains(transport.ReservedRange, r => r.Start == 2 && r.End == 2);
        Assert.Contains("ROW_TRANSPORT_SHARED_MEMORY", transport.ReservedName);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Service_IsPinned()
    {
        var service = ExpertWorkerReflection.Descriptor.Services.Single();
        Assert.Equal("distributed.expertworker.v1.ExpertWorker", service.FullName);
        Assert.Equal(["Hello", "Dispatch", "DispatchOnce"], service.Methods.Select(m => m.Name));
        Assert.True(service.FindMethodByName("Dispatch").IsClientStreaming);
        Assert.True(service.FindMethodByName("Dispatch").IsServerStreaming);
    }
}
