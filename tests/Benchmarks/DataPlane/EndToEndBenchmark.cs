using System.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Grpc;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// End-to-end greedy decode of a model with its routed experts in-process vs on N local worker processes (same run,
/// same prompt), with the dispatcher's breakdown: serialize (gather, scale, encode, write), wait (wire + worker),
/// worker (decode + compute + encode as reported by the workers), combine (decode replies, sum slots).
/// </summary>
internal static class EndToEndBenchmark
{
    public static async Task<int> RunAsync(string[] args)
    {
        string Arg(string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault() ?? fallback;
        string model = Arg("--model", FindFixture("tiny-maverick"));
        int workers = int.Parse(Arg("--workers", "2"));
        int tokens = int.Parse(Arg("--tokens", "64"));
        int[] prompt = [500, 17, 300, 42];

        using var local = Llama4Engine.Load(model, new CpuKernelBackend(1));
        int moeLayers = local.Config.MoeLayers.Count;
        double localTps = await DecodeAsync(local, prompt, tokens);
        Console.WriteLine($"model {model}, {moeLayers} MoE layers, {tokens} greedy tokens after a {prompt.Length}-token prompt, coordinator backend 1 thread");
        Console.WriteLine($"| experts | wire | tok/s | vs in-process | overhead per MoE layer | serialize | wait (wire+worker) | worker | combine |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        Console.WriteLine($"| in-process | - | {localTps:F1} | 1.00× | - | - | - | - | - |");

        var options = new LocalClusterOptions { Workers = workers, ModelDirectory = model };
        await using var cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions { WireDType = WireDType.Bf16 }, _ => { },
            NullLoggerFactory.Instance, CancellationToken.None);
        foreach (var (wire, shared) in new[] { (WireDType.Bf16, false), (WireDType.Fp32, false), (WireDType.Bf16, true) })
        {
            var dispatcher = cluster.CreateDispatcher(new DistributionOptions { WireDType = wire, PreferSharedMemory = shared });
            using var engine = Llama4Engine.Load(model, new CpuKernelBackend(1), dispatcher);
            await DecodeAsync(engine, prompt, 4);
            dispatcher.Statistics.Reset();
            double tps = await DecodeAsync(engine, prompt, tokens);
            var s = dispatcher.Statistics;
            double perLayerUs = (1e6 / tps - 1e6 / localTps) / moeLayers;
            double n = s.Dispatches;
            Console.WriteLine($"| {workers} workers | {wire}{(shared ? " shm" : "")} | {tps:F1} | {tps / localTps:F2}× | {perLayerUs:F0} µs | {1000 * s.SerializeMs / n:F0} µs | {1000 * s.WaitMs / n:F0} µs | {1000 * s.WorkerMs / n:F0} µs | {1000 * s.CombineMs / n:F0} µs |");
        }
        return 0;
    }

    private static async Task<double> DecodeAsync(Llama4Engine engine, int[] prompt, int tokens)
    {
        await engine.InferAsync(prompt, 2, CancellationToken.None);
        var sw = Stopwatch.StartNew();
        var r = await engine.InferAsync(prompt, tokens, CancellationToken.None);
        return (r.NewTokens.Length + prompt.Length) / sw.Elapsed.TotalSeconds;
    }

    private static string FindFixture(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "fixtures", name);
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException($"fixture {name} not found; pass --model DIR");
    }
}
