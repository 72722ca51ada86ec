using Distributed.Hosting;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Checkpoint;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// Redis membership (the multi-host configuration) against a real <c>redis-server</c> started here: two workers join
/// through Redis, the coordinator finds the gateways through Redis, and fp32 inference is bitwise the in-process one.
/// Skips (with the reason) when redis-server is not installed (Debian: <c>apt-get install redis-server</c>).
/// </summary>
[Trait("Category", "Integration")]
public sealed class RedisMembershipTests(ITestOutputHelper output)
{
    [RedisFact]
    public async Task TwoWorkers_RedisClustering_ServeBitwiseIdenticalFp32Inference()
    {
        ToolFactAttribute.Require(RedisServer.Missing);
        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        await using var redis = await RedisServer.StartAsync(log.Write);
        string connection = redis.Connection;
        string clusterId = $"redis-{Guid.NewGuid():N}";
        string fixture = TestPaths.Fixture("tiny-maverick");
        int[] ports = WorkerProcess.FreePorts(4);
        var workers = new List<WorkerProcess>();
        try
        {
            for (int i = 0; i < 2; i++)
            {
                workers.Add(WorkerProcess.Start(WorkerProcess.LocateWorker(),
                    ["--model", fixture, "--worker-id", $"r{i}", "--threads", "1", "--clustering", "Redis", "--redis", connection,
                     "--cluster-id", clusterId, "--silo-port", ports[2 * i].ToString(), "--gateway-port", ports[2 * i + 1].ToString(),
                     "--Placement:SettleDelay", "00:00:00.2"],
                    $"r{i}", log.Write));
            }
            foreach (var w in workers)
            {
                await w.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
            }
            var cluster = new ExpertClusterOptions { Clustering = ClusteringMode.Redis, RedisConnectionString = connection, ClusterId = clusterId };
            await using var follower = await ClusterPlacementFollower.StartAsync(cluster, loggerFactory);
            var table = await follower.WaitForServingAsync(2, TimeSpan.FromSeconds(60), CancellationToken.None);
            Assert.Equal(2, table.Workers.Count);

            ModelDescriptor model;
            using (var checkpoint = CheckpointReader.Open(fixture))
            {
                model = ModelDescriptors.FromCheckpoint(checkpoint);
            }
            await using var pool = new WorkerChannelPool(model, new DistributionOptions { WireDType = WireDType.Fp32 }, loggerFactory.CreateLogger<WorkerChannelPool>());
            using var engine = Llama4Engine.Load(fixture, new CpuKernelBackend(1), new GrpcExpertDispatcher(follower, pool));
            var golden = Golden.Load("tiny-maverick");
            var reference = await Reference.ForAsync("tiny-maverick");
            var r = await engine.InferAsync(golden.Prompts[0].InputIds, golden.Prompts[0].NewTokens.Length, CancellationToken.None);
            Assert.True(Reference.BitwiseEqual(reference[0].LastLogits, r.LastLogits));
            Assert.Equal(golden.Prompts[0].NewTokens, r.NewTokens);

            // Multi-host configuration: the placement plan is persisted in the same Redis, not in a silo's memory.
            using var mux = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(connection);
            var keys = mux.GetServer(connection).Keys(pattern: "*").Select(k => k.ToString()).ToList();
            output.WriteLine($"redis keys: {string.Join(", ", keys)}");
            Assert.Contains(keys, k => k.Contains("placement", StringComparison.OrdinalIgnoreCase));
        }
        finally
        {
            foreach (var w in workers)
            {
                await w.DisposeAsync();
            }
        }
    }
}
