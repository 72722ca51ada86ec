using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// Runs inside the worker's silo: registers the worker with the placement grain and follows the plan (long-poll on its
/// generation). It has the local <see cref="IExpertShardGrain"/> commit every new active version and stage every staged
/// version that lists this worker, and reports the shard's state after each step (a failed stage is reported as
/// such, so the change fails instead of waiting). Re-registers when neither plan lists this worker (e.g. the placement
/// grain lost its state or declared this worker gone). On shutdown it unregisters so its experts are re-placed without
/// waiting for membership to declare the silo dead.
/// </summary>
public sealed partial class WorkerAgent(IGrainFactory grains, ShardStore store, WorkerDescriptor self, ILogger<WorkerAgent> logger) : BackgroundService
{
    private static readonly TimeSpan PollWait = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan ReRegisterAfter = TimeSpan.FromSeconds(2);

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var placement = grains.GetGrain<IPlacementGrain>(IPlacementGrain.ClusterKey);
        var shard = grains.GetGrain<IExpertShardGrain>(self.WorkerId);
        long generation = -1;
        long applied = -1;
        long staged = -1;
        DateTime lastRegistration = DateTime.MinValue;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                PlacementSnapshot snapshot;
                if (lastRegistration == DateTime.MinValue)
                {
                    snapshot = await placement.RegisterWorkerAsync(self).WaitAsync(stoppingToken);
                    lastRegistration = DateTime.UtcNow;
                }
                else
                {
                    snapshot = await placement.WaitForChangeAsync(generation, PollWait).WaitAsync(stoppingToken);
                }
                generation = snapshot.Generation;
                var plan = snapshot.Plan;
                var next = snapshot.Staged;
                bool listed = plan.IndexOf(self.WorkerId) >= 0;
                bool stagedHere = next is not null && next.IndexOf(self.WorkerId) >= 0;
                if (!listed && !stagedHere && DateTime.UtcNow - lastRegistration > ReRegisterAfter)
                {
                    snapshot = await placement.RegisterWorkerAsync(self).WaitAsync(stoppingToken);
                    lastRegistration = DateTime.UtcNow;
                    generation = snapshot.Generation;
                    continue;
                }
                if (plan.Version > 0 && plan.Version != applied && (listed || applied > 0))
                {
                    var status = await shard.ApplyPlanAsync(plan).WaitAsync(stoppingToken);
                    applied = plan.Version;
                    await placement.ReportShardStatusAsync(status).WaitAsync(stoppingToken);
                }
                else if (next is null && store.Status.StagedVersion != 0 && plan.Version == applied)
                {
                    // The staged change was abandoned: drop what was loaded for it.
                    var status = await shard.ApplyPlanAsync(plan).WaitAsync(stoppingToken);
                    await placement.ReportShardStatusAsync(status).WaitAsync(stoppingToken);
                }
                if (stagedHere && next!.Version != staged && next.Version > plan.Version)
                {
                    staged = next.Version;
                    ShardStatus status;
                    try
                    {
                        status = await StageWithRetryAsync(shard, next, stoppingToken);
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException)
                    {
                        LogRetry(ex, $"staging plan {next.Version} failed: {ex.Message}");
                        status = store.Status with { State = ShardState.Failed, StagedVersion = next.Version, Error = ex.Message };
                    }
                    await placement.ReportShardStatusAsync(status).WaitAsync(stoppingToken);
                }
                else if (listed && plan.Version == applied && !snapshot.ReadyWorkers.Contains(self.WorkerId))
                {
                    await placement.ReportShardStatusAsync(store.Status).WaitAsync(stoppingToken);
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                LogRetry(ex, ex.Message);
                staged = -1;
                await Task.Delay(TimeSpan.FromMilliseconds(500), stoppingToken).ConfigureAwait(false);
            }
        }
    }

    // A silo that just joined may not yet be known (with its worker-id metadata) to the silo placing its shard grain:
    // that is retried briefly; a load failure is not.
    private static async Task<ShardStatus> StageWithRetryAsync(IExpertShardGrain shard, PlacementPlan plan, CancellationToken stoppingToken)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return await shard.StagePlanAsync(plan).WaitAsync(stoppingToken);
            }
            catch (OrleansException) when (attempt < 10)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(200), stoppingToken).ConfigureAwait(false);
            }
        }
    }

    /// <inheritdoc />
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        try
        {
            await grains.GetGrain<IPlacementGrain>(IPlacementGrain.ClusterKey).UnregisterWorkerAsync(self.WorkerId)
                .WaitAsync(TimeSpan.FromSeconds(2), cancellationToken);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            LogRetry(ex, "unregister on shutdown failed: " + ex.Message);
        }
        await base.StopAsync(cancellationToken);
    }

    [LoggerMessage(EventId = Diagnostics.LogEvents.AgentRetry, Level = LogLevel.Warning,
        Message = "Worker agent: {Reason}; retrying")]
    private partial void LogRetry(Exception exception, string reason);
}
