using Distributed.Protocol.Admin;

namespace Distributed.Protocol.Tests;

/// <summary>Pins every field number of admin.proto: a released number never changes or gets reused.</summary>
public class AdminProtoStabilityTests
{
    private static readonly string[] Pinned =
    [
        "Worker.id=1",
        "Worker.grpc_endpoint=2",
        "Worker.silo_address=3",
        "Worker.host_id=4",
        "Worker.state=5",
        "Worker.silo_status=6",
        "Worker.health=7",
        "Worker.memory_capacity_bytes=8",
        "Worker.resident_bytes=9",
        "Worker.experts_assigned=10",
        "Worker.experts_held=11",
        "Worker.shard_state=12",
        "Worker.last_report_unix_ms=13",
        "Worker.error=14",
        "ClusterReply.model_fingerprint=1",
        "ClusterReply.plan_version=2",
        "ClusterReply.staged_version=3",
        "ClusterReply.serving=4",
        "ClusterReply.problem=5",
        "ClusterReply.auto_place_joining_workers=6",
        "ClusterReply.workers=7",
        "ExpertHolders.expert=1",
        "ExpertHolders.workers=2",
        "LayerPlacement.layer=1",
        "LayerPlacement.experts=2",
        "PlacementReply.plan_version=1",
        "PlacementReply.staged_version=2",
        "PlacementReply.serving=3",
        "PlacementReply.workers=4",
        "PlacementReply.layers=5",
        "LayerLoad.layer=1",
        "LayerLoad.recent_tokens=2",
        "LayerLoad.total_tokens=3",
        "WorkerLoad.worker_id=1",
        "WorkerLoad.requests=2",
        "WorkerLoad.rows=3",
        "WorkerLoad.bytes_sent=4",
        "WorkerLoad.bytes_received=5",
        "WorkerLoad.mean_latency_ms=6",
        "WorkerLoad.max_latency_ms=7",
        "WorkerLoad.failures=8",
        "WorkerLoad.outstanding_rows=9",
        "ExpertLoadReply.window_seconds=1",
        "ExpertLoadReply.layers=2",
        "ExpertLoadReply.workers=3",
        "Operation.id=1",
        "Operation.kind=2",
        "Operation.state=3",
        "Operation.base_version=4",
        "Operation.target_version=5",
        "Operation.description=6",
        "Operation.error=7",
        "Operation.workers_staged=8",
        "Operation.workers_total=9",
        "Operation.created_unix_ms=10",
        "Operation.finished_unix_ms=11",
        "OperationReply.operation=1",
        "DrainWorkerRequest.worker_id=1",
        "ReplicaTarget.layer=1",
        "ReplicaTarget.expert=2",
        "ReplicaTarget.worker=3",
        "ServingReply.first_tokens=10",
        "ServingReply.inter_token_seconds_sum=13",
        "ServingReply.kv_blocks_cached=14",
        "ServingReply.kv_blocks_reserved=5",
        "ServingReply.kv_blocks_total=6",
        "ServingReply.kv_blocks_used=4",
        "ServingReply.later_tokens=12",
        "ServingReply.preemptions=18",
        "ServingReply.prefix_evictions=17",
        "ServingReply.prefix_hit_tokens=16",
        "ServingReply.prefix_queried_tokens=15",
        "ServingReply.queued=2",
        "ServingReply.requests_finished=9",
        "ServingReply.running=3",
        "ServingReply.steps=7",
        "ServingReply.time_to_first_token_seconds_sum=11",
        "ServingReply.tokens_generated=8",
        "ServingReply.uptime_seconds=1",
        "ChangeReplicasRequest.add=1",
        "ChangeReplicasRequest.remove=2",
        "RebalanceRequest.dry_run=1",
        "RebalanceRequest.extra_replicas_per_layer=2",
        "RebalanceRequest.has_extra_replicas_per_layer=3",
        "RebalanceRequest.load_window=4",
        "Balance.max_over_mean=1",
        "Balance.worst_layer_max_over_mean=2",
        "Balance.worker_load=3",
        "RebalanceReply.operation=1",
        "RebalanceReply.proposed=2",
        "RebalanceReply.before=3",
        "RebalanceReply.after=4",
        "RebalanceReply.experts_moved=5",
        "RebalanceReply.dry_run=6",
        "GetOperationRequest.id=1",
        "GetOperationRequest.wait_seconds=2",
    ];

    [Fact]
    [Trait("Category", "Unit")]
    public void EveryFieldNumber_IsPinned()
    {
        var actual = AdminReflection.Descriptor.MessageTypes
            .SelectMany(m => m.Fields.InFieldNumberOrder().Select(f => $"{m.Name}.{f.Name}={f.FieldNumber}"))
            .ToList();
        Assert.Equal(Pinned.Order(StringComparer.Ordinal), actual.Order(StringComparer.Ordinal));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void Service_HasTheAdminOperations()
        => Assert.Equal(["GetCluster", "GetPlacement", "GetExpertLoad", "DrainWorker", "ChangeReplicas", "Rebalance", "GetOperation", "GetServing"],
            AdminReflection.Descriptor.Services.Single().Methods.Select(m => m.Name));
}
