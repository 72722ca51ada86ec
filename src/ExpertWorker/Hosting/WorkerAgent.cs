using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Grains;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// Runs inside the worker's silo: registers the worker with the placement grain, follows the plan (long-poll on its
/// generation), has the local <see cref="IExpertShardGrain"/> apply every new version, and reports the shard serving.
/// Re-registers when a plan no longer lists this worker (e.g. the placement grain lost its state). On shutdown it
/// unregisters so the plan is rebuilt without waiting for membership to declare the silo dead.
/// </summary>
public sealed partial class WorkerAgent(IGrainFactory grains, ShardStore store, WorkerDescriptor self, ILogger<WorkerAgent> logger) : BackgroundService
{
    private static readonly TimeSpan PollWait = TimeSpan.FromSeconds(10);

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var placement = grains.GetGrain<IPlacementGrain>(IPlacementGrain.ClusterKey);
        var shard = grains.GetGrain<IExpertShardGrain>(self.WorkerId);
        long generation = -1;
        long applied = -1;
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
                bool listed = plan.IndexOf(self.WorkerId) >= 0;
                if (!listed && plan.Version > 0 && DateTime.UtcNow - lastRegistration > TimeSpan.FromSeconds(2))
                {
                    snapshot = await placement.RegisterWorkerAsync(self).WaitAsync(stoppingToken);
                    lastRegistration = DateTime.UtcNow;
                    generation = snapshot.Generation;
                    continue;
                }
                if (plan.Version > 0 && plan.Version != applied)
                {
                    var status = await shard.ApplyPlanAsync(plan).WaitAsync(stoppingToken);
                    applied = plan.Version;
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
                await Task.Delay(TimeSpan.FromMilliseconds(500), stoppingToken).ConfigureAwait(false);
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
