using Distributed.Coordinator.Moe;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

/// <summary>The state of one MoE-layer dispatch of <see cref="GrpcExpertDispatcher"/>: its requests and what failed.</summary>
internal sealed class GrpcDispatchHandle(int layer, DispatchPlan plan, ReadOnlyMemory<float> hidden, RoutingResult routing, string traceparent)
    : DispatchHandle(layer, plan.Tokens)
{
    private List<DispatchPart> _parts = [];

    public DispatchPlan Plan { get; } = plan;
    public ReadOnlyMemory<float> Hidden { get; } = hidden;
    public RoutingResult Routing { get; } = routing;
    public string Traceparent { get; } = traceparent;

    /// <summary>Requests of the current round, not yet awaited.</summary>
    public List<DispatchPart> Parts => _parts;

    /// <summary>Every request of every round (released when the combine ends).</summary>
    public List<DispatchPart> AllParts { get; } = [];

    /// <summary>Slices to send again (their worker was lost or refused the plan version).</summary>
    public List<RowSlice> Failed { get; } = [];

    /// <summary>Workers lost in the current round.</summary>
    public List<WorkerEndpoint> Lost { get; } = [];

    /// <summary>A worker refused the plan version as stale in the current round.</summary>
    public bool Stale { get; set; }

    /// <summary>Plan version of the current round.</summary>
    public ulong TableVersion { get; set; }

    /// <summary>The latest failure (the error when retries run out).</summary>
    public ExpertDispatchException? LastFailure { get; set; }

    /// <summary>TimeProvider timestamp of the first request sent (0 until then).</summary>
    public long FirstSentTimestamp { get; set; }

    public List<DispatchPart> TakeParts()
    {
        var taken = _parts;
        _parts = [];
        return taken;
    }
}

/// <summary>One request of a dispatch to one worker: its rows, its reply, and when it went out.</summary>
internal sealed class DispatchPart(IWorkerConnection connection, ExpertRequest header, RowLease lease, RowSlice[] slices,
    Task<TensorFrame<ExpertReply>> reply, long sentTimestamp, ExpertPlacementTable table)
{
    private int _released;

    public IWorkerConnection Connection { get; } = connection;
    public ExpertRequest Header { get; } = header;
    public RowLease Lease { get; } = lease;
    public RowSlice[] Slices { get; } = slices;
    public Task<TensorFrame<ExpertReply>> Reply { get; } = reply;
    public long SentTimestamp { get; } = sentTimestamp;
    public ExpertPlacementTable Table { get; } = table;
    public bool Done { get; set; }

    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            Lease.Dispose();
        }
    }

    // A shared-ring region may still be written by a worker that never answered: it is then abandoned (kept
    // allocated, bounded by the ring size) rather than handed to another request.
    public void ReleaseWhenAnswered()
    {
        if (Volatile.Read(ref _released) != 0)
        {
            return;
        }
        _ = Reply.ContinueWith(t =>
        {
            if (t.IsCompletedSuccessfully)
            {
                t.Result.Dispose();
                Release();
            }
            else if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                Lease.Abandon();
            }
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
