using Distributed.Protocol.Admin;
using Grpc.Core;
using Proto = Distributed.Protocol.Admin;

namespace Distributed.Coordinator.Admin;

/// <summary>
/// The admin API as a gRPC service (<c>admin.proto</c>): the same operations as the REST endpoints, the same
/// <see cref="ClusterAdmin"/> behind them. Authentication: <c>authorization: Bearer &lt;token&gt;</c> metadata, else
/// UNAUTHENTICATED before anything is read or changed.
/// </summary>
public sealed class AdminGrpcService(ClusterAdmin admin, Distributed.Hosting.BearerTokenAuthenticator authenticator) : Proto.ClusterAdmin.ClusterAdminBase
{
    /// <inheritdoc />
    public override Task<ClusterReply> GetCluster(GetClusterRequest request, ServerCallContext context)
        => RunAsync(context, async ct =>
        {
            var c = await admin.GetClusterAsync(ct);
            var reply = new ClusterReply
            {
                ModelFingerprint = c.ModelFingerprint,
                PlanVersion = c.PlanVersion,
                StagedVersion = c.StagedVersion ?? 0,
                Serving = c.Serving,
                Problem = c.Problem ?? "",
                AutoPlaceJoiningWorkers = c.AutoPlaceJoiningWorkers,
            };
            reply.Workers.AddRange(c.Workers.Select(w => new Worker
            {
                Id = w.Id,
                GrpcEndpoint = w.GrpcEndpoint,
                SiloAddress = w.SiloAddress,
                HostId = w.HostId,
                State = w.State,
                SiloStatus = w.SiloStatus,
                Health = w.Health,
                MemoryCapacityBytes = w.MemoryCapacityBytes,
                ResidentBytes = w.ResidentBytes,
                ExpertsAssigned = w.ExpertsAssigned,
                ExpertsHeld = w.ExpertsHeld,
                ShardState = w.ShardState,
                LastReportUnixMs = w.LastReportUnixMs ?? 0,
                Error = w.Error ?? "",
            }));
            return reply;
        });

    /// <inheritdoc />
    public override Task<PlacementReply> GetPlacement(GetPlacementRequest request, ServerCallContext context)
        => RunAsync(context, async ct => ToProto(await admin.GetPlacementAsync(ct)));

    /// <inheritdoc />
    public override Task<ExpertLoadReply> GetExpertLoad(GetExpertLoadRequest request, ServerCallContext context)
        => RunAsync(context, ct =>
        {
            var load = admin.GetExpertLoad();
            var reply = new ExpertLoadReply { WindowSeconds = load.WindowSeconds };
            foreach (var l in load.Layers)
            {
                var layer = new Proto.LayerLoad { Layer = l.Layer };
                layer.RecentTokens.AddRange(l.RecentTokens);
                layer.TotalTokens.AddRange(l.TotalTokens);
                reply.Layers.Add(layer);
            }
            reply.Workers.AddRange(load.Workers.Select(w => new WorkerLoad
            {
                WorkerId = w.WorkerId,
                Requests = w.Requests,
                Rows = w.Rows,
                BytesSent = w.BytesSent,
                BytesReceived = w.BytesReceived,
                MeanLatencyMs = w.MeanLatencyMs,
                MaxLatencyMs = w.MaxLatencyMs,
                Failures = w.Failures,
                OutstandingRows = w.OutstandingRows,
            }));
            return Task.FromResult(reply);
        });

    /// <inheritdoc />
    public override Task<ServingReply> GetServing(GetServingRequest request, ServerCallContext context)
        => RunAsync(context, ct =>
        {
            var s = admin.GetServing();
            return Task.FromResult(new ServingReply
            {
                UptimeSeconds = s.UptimeSeconds,
                Queued = s.Queued,
                Running = s.Running,
                KvBlocksUsed = s.KvBlocksUsed,
                KvBlocksCached = s.KvBlocksCached,
                KvBlocksTotal = s.KvBlocksTotal,
                Steps = s.Steps,
                TokensGenerated = s.TokensGenerated,
                RequestsFinished = s.RequestsFinished,
                FirstTokens = s.FirstTokens,
                TimeToFirstTokenSecondsSum = s.TimeToFirstTokenSecondsSum,
                LaterTokens = s.LaterTokens,
                InterTokenSecondsSum = s.InterTokenSecondsSum,
                PrefixQueriedTokens = s.PrefixQueriedTokens,
                PrefixHitTokens = s.PrefixHitTokens,
                PrefixEvictions = s.PrefixEvictions,
                Preemptions = s.Preemptions,
            });
        });

    /// <inheritdoc />
    public override Task<OperationReply> DrainWorker(DrainWorkerRequest request, ServerCallContext context)
        => RunAsync(context, async ct => new OperationReply { Operation = ToProto(await admin.DrainAsync(request.WorkerId, ct)) });

    /// <inheritdoc />
    public override Task<OperationReply> ChangeReplicas(ChangeReplicasRequest request, ServerCallContext context)
        => RunAsync(context, async ct =>
        {
            static List<ReplicaTarget> Targets(IEnumerable<Proto.ReplicaTarget> list)
                => [.. list.Select(t => new ReplicaTarget(t.Layer, t.Expert, string.IsNullOrEmpty(t.Worker) ? null : t.Worker))];
            var op = await admin.ChangeReplicasAsync(new ReplicaChangeRequest(Targets(request.Add), Targets(request.Remove)), ct);
            return new OperationReply { Operation = ToProto(op) };
        });

    /// <inheritdoc />
    public override Task<RebalanceReply> Rebalance(Proto.RebalanceRequest request, ServerCallContext context)
        => RunAsync(context, async ct =>
        {
            var r = await admin.RebalanceAsync(new RebalanceRequestBody(request.DryRun, request.HasExtraReplicasPerLayer ? request.ExtraReplicasPerLayer : null,
                string.IsNullOrEmpty(request.LoadWindow) ? null : request.LoadWindow), ct);
            return new RebalanceReply
            {
                DryRun = r.DryRun,
                Operation = r.Operation is null ? null : ToProto(r.Operation),
                Proposed = ToProto(r.Proposed),
                Before = ToProto(r.Before),
                After = ToProto(r.After),
                ExpertsMoved = r.ExpertsMoved,
            };
        });

    /// <inheritdoc />
    public override Task<OperationReply> GetOperation(GetOperationRequest request, ServerCallContext context)
        => RunAsync(context, async ct => new OperationReply { Operation = ToProto(await admin.GetOperationAsync(request.Id, ct)) });

    private async Task<T> RunAsync<T>(ServerCallContext context, Func<CancellationToken, Task<T>> action)
    {
        if (!authenticator.IsAuthorized(context.RequestHeaders.GetValue("authorization")))
        {
            throw new RpcException(new Status(StatusCode.Unauthenticated, "a valid 'authorization: Bearer <token>' header is required"));
        }
        try
        {
            return await action(context.CancellationToken);
        }
        catch (AdminException ex)
        {
            var metadata = new Metadata { { "x-admin-error-code", ex.Code } };
            if (ex.Field is not null)
            {
                metadata.Add("x-admin-error-field", ex.Field);
            }
            throw new RpcException(new Status(ex.GrpcStatus, ex.Message), metadata);
        }
    }

    private static PlacementReply ToProto(PlacementInfo p)
    {
        var reply = new PlacementReply { PlanVersion = p.PlanVersion, StagedVersion = p.StagedVersion ?? 0, Serving = p.Serving };
        reply.Workers.AddRange(p.Workers);
        foreach (var l in p.Layers)
        {
            var layer = new Proto.LayerPlacement { Layer = l.Layer };
            foreach (var e in l.Experts)
            {
                var holders = new ExpertHolders { Expert = e.Expert };
                holders.Workers.AddRange(e.Workers);
                layer.Experts.Add(holders);
            }
            reply.Layers.Add(layer);
        }
        return reply;
    }

    private static Operation ToProto(OperationInfo o) => new()
    {
        Id = o.Id,
        Kind = o.Kind,
        State = o.State,
        BaseVersion = o.BaseVersion,
        TargetVersion = o.TargetVersion,
        Description = o.Description,
        Error = o.Error ?? "",
        WorkersStaged = o.WorkersStaged,
        WorkersTotal = o.WorkersTotal,
        CreatedUnixMs = o.CreatedUnixMs,
        FinishedUnixMs = o.FinishedUnixMs ?? 0,
    };

    private static Balance ToProto(BalanceInfo b)
    {
        var balance = new Balance { MaxOverMean = b.MaxOverMean, WorstLayerMaxOverMean = b.WorstLayerMaxOverMean };
        foreach (var (k, v) in b.WorkerLoad)
        {
            balance.WorkerLoad[k] = v;
        }
        return balance;
    }
}
