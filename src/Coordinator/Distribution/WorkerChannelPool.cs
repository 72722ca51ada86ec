using System.Collections.Concurrent;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// One <see cref="WorkerConnection"/> per worker endpoint, created on first use (concurrent callers share the
/// handshake) and replaced when its stream broke.
/// </summary>
public sealed partial class WorkerChannelPool : IAsyncDisposable
{
    private readonly ModelDescriptor _model;
    private readonly DistributionOptions _options;
    private readonly ILogger<WorkerChannelPool> _logger;
    private readonly ConcurrentDictionary<string, Lazy<Task<WorkerConnection>>> _connections = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _disposed = new();

    /// <summary>Creates the pool.</summary>
    /// <exception cref="ArgumentException"><paramref name="options"/> are invalid (every problem listed; a weak
    /// <see cref="DistributionOptions.ClusterToken"/> is named, never shown).</exception>
    public WorkerChannelPool(ModelDescriptor model, DistributionOptions options, ILogger<WorkerChannelPool> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = options.Validate();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(options));
        }
        _model = model;
        _options = options;
        _logger = logger;
    }

    /// <summary>The model every worker must serve.</summary>
    public ModelDescriptor Model => _model;

    /// <summary>The options connections use.</summary>
    public DistributionOptions Options => _options;

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

    private async Task<WorkerConnection> ConnectAsync(WorkerEndpoint worker)
    {
        var connection = await WorkerConnection.ConnectAsync(worker, _model, _options, _logger, _disposed.Token).ConfigureAwait(false);
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
