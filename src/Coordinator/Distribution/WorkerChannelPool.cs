using System.Collections.Concurrent;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// One <see cref="WorkerConnection"/> per worker endpoint, created on first use (concurrent callers share the
/// handshake) and replaced when its stream broke.
/// </summary>
/// <param name="model">The model every worker must serve.</param>
/// <param name="options">Timeouts and transports.</param>
/// <param name="logger">Log sink.</param>
/// <param name="tls">The cluster credentials for workers that serve TLS; null when the data plane is cleartext.</param>
public sealed partial class WorkerChannelPool(ModelDescriptor model, DistributionOptions options, ILogger<WorkerChannelPool> logger, ClusterCredentials? tls = null)
    : IWorkerConnectionSource, IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, Lazy<Task<WorkerConnection>>> _connections = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _disposed = new();

    /// <summary>The model every worker must serve.</summary>
    public ModelDescriptor Model => model;

    /// <summary>The options connections use.</summary>
    public DistributionOptions Options => options;

    /// <summary>The live connection to <paramref name="worker"/>, connecting (or reconnecting) if needed.</summary>
    /// <exception cref="ExpertDispatchException">The worker cannot be reached or refuses the handshake.</exception>
    public async Task<WorkerConnection> GetAsync(WorkerEndpoint worker, CancellationToken cancellationToken)
    {
        for (int attempt = 0; ; attempt++)
        {
            var lazy = _connections.GetOrAdd(worker.Endpoint, _ => new Lazy<Task<WorkerConnection>>(
                () => ConnectAsync(worker)));
            WorkerConnection connection;
            try
            {
                connection = await lazy.Value.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception) when (!cancellationToken.IsCancellationRequested)
            {
                _connections.TryRemove(new KeyValuePair<string, Lazy<Task<WorkerConnection>>>(worker.Endpoint, lazy));
                throw;
            }
            if (connection.Broken is null || attempt > 0)
            {
                return connection;
            }
            if (_connections.TryRemove(new KeyValuePair<string, Lazy<Task<WorkerConnection>>>(worker.Endpoint, lazy)))
            {
                _ = connection.DisposeAsync().AsTask();
            }
        }
    }

    /// <inheritdoc />
    async Task<IWorkerConnection> IWorkerConnectionSource.ConnectAsync(WorkerEndpoint worker, CancellationToken cancellationToken)
        => await GetAsync(worker, cancellationToken).ConfigureAwait(false);

    private async Task<WorkerConnection> ConnectAsync(WorkerEndpoint worker)
    {
        var connection = await WorkerConnection.ConnectAsync(worker, model, options, logger, _disposed.Token, tls).ConfigureAwait(false);
        WarnOnMixedNumerics(connection);
        return connection;
    }

    // Placement independence needs every expert to compute alike: a worker whose kernels use other arithmetic (CPU bf16
    // beside CPU fp32, a GPU beside a CPU) makes outputs depend on which worker serves an expert. It still serves (a
    // mixed fleet can be deliberate), but the operator is told once per connection, naming both workers.
    private void WarnOnMixedNumerics(WorkerConnection connection)
    {
        string mine = connection.Hello.KernelNumerics;
        if (mine.Length == 0)
        {
            return;
        }
        var other = Connections.FirstOrDefault(c => !ReferenceEquals(c, connection) && c.Hello.KernelNumerics.Length > 0
            && !string.Equals(c.Hello.KernelNumerics, mine, StringComparison.Ordinal));
        if (other is not null)
        {
            LogMixedNumerics(connection.Worker.WorkerId, mine, other.Worker.WorkerId, other.Hello.KernelNumerics);
        }
    }

    [LoggerMessage(EventId = 2150, Level = LogLevel.Warning,
        Message = "Worker {WorkerId} computes experts in {Numerics} but worker {OtherWorkerId} in {OtherNumerics}: outputs now depend on which worker serves an expert. Give every worker the same kernel backend and --cpu-precision")]
    private partial void LogMixedNumerics(string workerId, string numerics, string otherWorkerId, string otherNumerics);

    /// <summary>Live connections (for diagnostics and tests).</summary>
    public IReadOnlyList<WorkerConnection> Connections
        => [.. _connections.Values.Where(l => l.IsValueCreated && l.Value.IsCompletedSuccessfully).Select(l => l.Value.Result)];

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _disposed.Cancel();
        foreach (var lazy in _connections.Values)
        {
            if (lazy.IsValueCreated && lazy.Value.IsCompletedSuccessfully)
            {
                await lazy.Value.Result.DisposeAsync().ConfigureAwait(false);
            }
        }
        _connections.Clear();
        _disposed.Dispose();
    }
}
