using System.Text.Json;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Grpc;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// Issue #4: the long-context fixture (real chunk 8192 / temperature floor 8192) through the serving path — paged KV
/// cache, chunked prefill in the continuous-batching scheduler — with the routed experts on 2 real worker processes.
/// The 8186-token prompt's greedy decode crosses position 8191 (temperature step) and 8192 (second attention chunk).
/// </summary>
[Trait("Category", "Integration")]
public sealed class LongContextDistributedTests(ITestOutputHelper output)
{
    [Fact]
    public async Task LongPrompt_PagedCacheChunkedPrefill_TwoWorkers_MatchesGolden()
    {
        string dir = TestPaths.Fixture("tiny-maverick-long");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "golden.json")));
        var p = doc.RootElement.GetProperty("prompts")[2];
        int[] prompt = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        int[] expected = p.GetProperty("greedy").GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        var options = new LocalClusterOptions { Workers = 2, ModelDirectory = dir, StartTimeout = TimeSpan.FromSeconds(90) };
        await using var cluster = await LocalWorkerCluster.StartAsync(options,
            new DistributionOptions { WireDType = WireDType.Fp32, DispatchTimeout = TimeSpan.FromSeconds(30) }, log.Write, loggerFactory, CancellationToken.None);
        using var engine = Llama4Engine.Load(dir, new CpuKernelBackend(1), cluster.Dispatcher);
        await using var scheduler = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefillChunkTokens = 512, MaxBatchTokens = 512, KvMemoryBytes = 64L << 20 });

        var tokens = new List<int>();
        await foreach (var t in scheduler.GenerateAsync(new GenerationRequest("long", prompt, expected.Length, SamplingParams.Greedy), CancellationToken.None))
        {
            tokens.Add(t.TokenId);
        }
        Assert.Equal(expected, tokens);
        Assert.Equal(0, scheduler.Stats.KvBlocksUsed);
        output.WriteLine($"{prompt.Length}-token prompt on 2 workers: greedy tokens match golden; {cluster.GrpcDispatcher.Statistics}");
    }
}
