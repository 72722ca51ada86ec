using System.Collections.Concurrent;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// One <see cref="WorkerConnection"/> per worker endpoint, created on first use (concurrent callers share the
/// handshake) and replaced when its stream broke.
/// </summary>
public sealed class WorkerChannelPool(ModelDescriptor model, DistributionOptions options, ILogger<WorkerChannelPool> logger) : IAsyncDisposable
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
                () => WorkerConnection.ConnectAsync(worker, model, options, logger, _disposed.Token)));
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
