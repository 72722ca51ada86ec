using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The dispatcher's view of its link to one worker (<see cref="WorkerConnection"/> in production; fakes in unit tests):
/// rows are rented here, requests go out one by one, replies come back by request id in any order.
/// </summary>
public interface IWorkerConnection
{
    /// <summary>The worker.</summary>
    WorkerEndpoint Worker { get; }

    /// <summary>The worker's handshake reply (its shards, limits and transport).</summary>
    HelloReply Hello { get; }

    /// <summary>Why the link ended, or null while it is usable.</summary>
    Exception? Broken { get; }

    /// <summary>Rows for one request of <paramref name="bytes"/> bytes (a shared-ring region when negotiated and free, else a pooled buffer).</summary>
    RowLease RentRows(int bytes);

    /// <summary>
    /// Sends one request (its <c>request_id</c> is assigned here) whose rows are in <paramref name="rows"/>, and returns
    /// the task of its reply once the request is written.
    /// </summary>
    /// <exception cref="ExpertDispatchException">Unavailable: the link is broken or the write failed. The returned task
    /// faults with it when the link breaks before the reply.</exception>
    Task<Task<TensorFrame<ExpertReply>>> SendAsync(ExpertRequest header, RowLease rows, CancellationToken cancellationToken);

    /// <summary>Forgets a request (its deadline passed): its reply task is cancelled and a late reply is dropped.</summary>
    void Abandon(ulong requestId);
}

/// <summary>Where the dispatcher gets its worker links (<see cref="WorkerChannelPool"/> in production).</summary>
public interface IWorkerConnectionSource
{
    /// <summary>The model every worker must serve.</summary>
    ModelDescriptor Model { get; }

    /// <summary>Data-plane settings (wire dtype, deadlines, retries, replica splitting).</summary>
    DistributionOptions Options { get; }

    /// <summary>The live link to <paramref name="worker"/>, connecting (or reconnecting) when needed.</summary>
    /// <exception cref="ExpertDispatchException">The worker cannot be reached or refuses the handshake.</exception>
    Task<IWorkerConnection> ConnectAsync(WorkerEndpoint worker, CancellationToken cancellationToken);
}
