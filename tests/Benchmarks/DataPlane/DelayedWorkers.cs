using Distributed.Checkpoint;
using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Tests.Shared;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// Benchmark tooling (issue #15): N ExpertWorker processes serving static shards of a model (the routed experts of
/// every MoE layer split into N contiguous ranges), each behind one <see cref="DelayRelay"/> per requested one-way delay.
/// A coordinator that connects to <see cref="Addresses"/> of a delay talks to every worker through a link of that
/// delay. Shared memory would bypass the relay, so users must connect with <see cref="DistributionOptions.PreferSharedMemory"/> off.
/// </summary>
internal sealed class DelayedWorkers : IAsyncDisposable
{
    private readonly List<WorkerProcess> _workers = [];
    private readonly Dictionary<int, DelayRelay[]> _relays = [];

    private DelayedWorkers(ModelDescriptor model) => Model = model;

    /// <summary>The model the workers serve.</summary>
    public ModelDescriptor Model { get; }

    /// <summary>The cluster credential the workers require (<c>DISTRIBUTED_CLUSTER_TOKEN</c>, generated when unset).</summary>
    public string Token { get; private set; } = "";

    /// <summary>The workers' own data-plane addresses (no relay).</summary>
    public IReadOnlyList<string> Direct { get; private set; } = [];

    /// <summary>
    /// Starts <paramref name="workers"/> workers on <paramref name="modelDirectory"/> (1 kernel thread each) and a relay
    /// per worker for every delay in <paramref name="delaysMicroseconds"/> (0 = the relay's own cost only).
    /// </summary>
    public static async Task<DelayedWorkers> StartAsync(string modelDirectory, int workers, IEnumerable<int> delaysMicroseconds, Action<string> log)
    {
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(modelDirectory))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        var set = new DelayedWorkers(model);
        // The workers require the cluster credential; children (workers, a serve process) inherit this process's.
        if (ClusterToken.Resolve().Token is null)
        {
            Environment.SetEnvironmentVariable(ClusterToken.EnvironmentVariable, ClusterToken.Generate());
        }
        set.Token = ClusterToken.Resolve().Token!;
        try
        {
            string exe = WorkerProcess.LocateWorker();
            var moeLayers = Enumerable.Range(0, model.NumLayers).Where(model.IsMoeLayer).ToArray();
            for (int w = 0; w < workers; w++)
            {
                int first = w * model.NumExperts / workers, last = (w + 1) * model.NumExperts / workers - 1;
                string shard = string.Join(",", moeLayers.Select(l => $"{l}:{first}-{last}"));
                set._workers.Add(WorkerProcess.Start(exe, ["--model", modelDirectory, "--experts", shard, "--threads", "1", "--worker-id", $"w{w}"], $"w{w}", log));
            }
            var direct = new List<string>();
            foreach (var worker in set._workers)
            {
                direct.Add(await worker.WaitReadyAsync(TimeSpan.FromSeconds(120), CancellationToken.None).ConfigureAwait(false));
            }
            set.Direct = direct;
            foreach (int us in delaysMicroseconds.Distinct())
            {
                set._relays[us] = [.. direct.Select(a => DelayRelay.Start(a, TimeSpan.FromTicks(us * TimeSpan.TicksPerMicrosecond)))];
            }
            return set;
        }
        catch
        {
            await set.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The workers' addresses through the relays of <paramref name="delayMicroseconds"/>, in worker order.</summary>
    public IReadOnlyList<string> Addresses(int delayMicroseconds) => [.. _relays[delayMicroseconds].Select(r => r.HttpAddress)];

    /// <summary>How long chunks spent in the relays of <paramref name="delayMicroseconds"/> since the last call (median of the workers' medians).</summary>
    public HoldSummary TakeHolds(int delayMicroseconds)
    {
        var holds = _relays[delayMicroseconds].Select(r => r.HoldStatistics()).OrderBy(h => h.P50Microseconds).ToArray();
        foreach (var r in _relays[delayMicroseconds])
        {
            r.ResetHoldStatistics();
        }
        return holds[holds.Length / 2];
    }

    /// <summary>
    /// A dispatcher over the workers through the relays of <paramref name="delayMicroseconds"/> (null: directly), inline
    /// rows (shared memory would bypass the relay), placement from the handshakes.
    /// </summary>
    public async Task<(GrpcExpertDispatcher Dispatcher, WorkerChannelPool Pool)> ConnectAsync(int? delayMicroseconds, DistributionOptions options)
    {
        options.PreferSharedMemory = false;
        options.ClusterToken = Token;
        var pool = new WorkerChannelPool(Model, options, Microsoft.Extensions.Logging.Abstractions.NullLogger<WorkerChannelPool>.Instance);
        var hellos = new List<(WorkerEndpoint, HelloReply)>();
        var addresses = delayMicroseconds is { } us ? Addresses(us) : Direct;
        for (int w = 0; w < addresses.Count; w++)
        {
            var endpoint = new WorkerEndpoint($"w{w}", addresses[w]);
            var connection = await pool.GetAsync(endpoint, CancellationToken.None).ConfigureAwait(false);
            hellos.Add((endpoint with { WorkerId = connection.Hello.WorkerId }, connection.Hello));
        }
        var source = new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(Model, hellos));
        return (new GrpcExpertDispatcher(source, pool), pool);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var relays in _relays.Values)
        {
            foreach (var r in relays)
            {
                r.Dispose();
            }
        }
        foreach (var w in _workers)
        {
            await w.DisposeAsync().ConfigureAwait(false);
        }
    }
}
