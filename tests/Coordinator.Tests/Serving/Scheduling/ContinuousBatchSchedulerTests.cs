using System.Text.Json;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Xunit.Abstractions;

namespace Distributed.Coordinator.Tests.Serving.Scheduling;

[Trait("Category", "Integration")]
public sealed class ContinuousBatchSchedulerTests(ITestOutputHelper output) : IDisposable
{
    private readonly CpuKernelBackend _backend = new();

    public void Dispose() => _backend.Dispose();

    private static (int[] Prompt, int[] NewTokens)[] Golden(string fixture)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TestPaths.Fixture(fixture), "golden.json")));
        return doc.RootElement.GetProperty("prompts").EnumerateArray().Select(p => (
            p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            p.GetProperty("greedy").GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray())).ToArray();
    }

    private static async Task<int[]> CollectAsync(IGenerationScheduler s, int[] prompt, int maxTokens, CancellationToken ct = default)
    {
        var tokens = new List<int>();
        await foreach (var t in s.GenerateAsync(new GenerationRequest(Guid.NewGuid().ToString("N"), prompt, maxTokens, SamplingParams.Greedy), ct))
        {
            tokens.Add(t.TokenId);
        }
        return [.. tokens];
    }

    [Fact]
    public async Task GreedyAlone_MatchesGoldenTokens()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        foreach (var (prompt, expected) in Golden("tiny-maverick"))
        {
            Assert.Equal(expected, await CollectAsync(s, prompt, expected.Length));
        }
        Assert.Equal(0, s.Stats.KvBlocksUsed);
        Assert.Equal(0, s.Stats.KvBlocksUsed);
    }

    [Fact]
    public async Task Stats_CountFinishedRequests_FirstAndLaterTokens_WithTheirLatencySums()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        var before = s.Stats;
        Assert.Equal((0L, 0L, 0L, 0L), (before.RequestsFinished, before.FirstTokens, before.LaterTokens, before.TokensGenerated));
        var started = System.Diagnostics.Stopwatch.StartNew();
        var results = await Task.WhenAll(CollectAsync(s, [500, 12, 7], 5), CollectAsync(s, [500, 40], 3), CollectAsync(s, [500], 1));
        double wall = started.Elapsed.TotalSeconds;
        var after = s.Stats;
        int tokens = results.Sum(r => r.Length);
        Assert.Equal(9, tokens);
        Assert.Equal(3, after.RequestsFinished);
        Assert.Equal(3, after.FirstTokens);
        Assert.Equal(tokens - 3, after.LaterTokens);
        Assert.Equal(tokens, after.TokensGenerated);
        // Each request's first token came after it was submitted and no later than the wall time of the whole call.
        Assert.InRange(after.TimeToFirstTokenSeconds, 1e-9, 3 * wall);
        Assert.InRange(after.InterTokenSeconds, 1e-9, 3 * wall);
    }

    [Fact]
    public async Task GreedyAmongSixteenOthers_SameTokensAsAlone()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-scout"), _backend);
        // Small prefill chunks and step budget: prompts prefill over several steps while others decode.
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefillChunkTokens = 5, MaxBatchTokens = 24, MaxRunningSequences = 17 });
        var golden = Golden("tiny-scout");
        var rng = new Random(7);
        var others = Enumerable.Range(0, 16).Select(i => Enumerable.Range(0, 1 + rng.Next(60)).Select(_ => rng.Next(496)).Prepend(500).ToArray()).ToArray();
        var alone = new int[others.Length][];
        for (int i = 0; i < others.Length; i++)
        {
            alone[i] = await CollectAsync(s, others[i], 12);
        }

        var target = golden[3];
        var tasks = others.Select(p => CollectAsync(s, p, 12)).Append(CollectAsync(s, target.Prompt, target.NewTokens.Length)).ToArray();
        var results = await Task.WhenAll(tasks);
        Assert.Equal(target.NewTokens, results[^1]);
        for (int i = 0; i < others.Length; i++)
        {
            Assert.Equal(alone[i], results[i]);
        }
        output.WriteLine($"steps {s.Stats.Steps}, tokens {s.Stats.TokensGenerated}");
    }

    [Fact]
    public async Task LongContext_PagedCacheChunkedPrefill_MatchesGolden_AndSavesMemory()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick-long"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefillChunkTokens = 512, MaxBatchTokens = 512, KvMemoryBytes = 64L << 20 });
        var golden = Golden("tiny-maverick-long");
        // p2: 8186-token prompt whose greedy decode crosses 8191 (temperature step) and 8192 (second chunk).
        var (prompt, expected) = golden[2];
        Assert.Equal(expected, await CollectAsync(s, prompt, expected.Length));

        int total = prompt.Length + expected.Length;
        int paged = s.KvPool.BlocksNeeded(16500 + 16, 512), full = s.KvPool.BlocksNeededWithoutChunking(16500 + 16);
        output.WriteLine($"16,516-token sequence: {paged} blocks with chunked layers vs {full} keeping everything ({100.0 * (full - paged) / full:F1}% saved); {total}-token run reserved {s.KvPool.BlocksNeeded(total, 512)}");
        Assert.True(paged < full);
        Assert.Equal(0, s.Stats.KvBlocksUsed);
    }

    [Fact]
    public async Task Cancellation_FreesBlocksAndOthersContinue()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        using var cts = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var t in s.GenerateAsync(new GenerationRequest("c", [500, 1, 2, 3], 3000, SamplingParams.Greedy), cts.Token))
            {
                if (++seen == 3)
                {
                    cts.Cancel();
                }
            }
        });
        var (prompt, expected) = Golden("tiny-maverick")[1];
        Assert.Equal(expected, await CollectAsync(s, prompt, expected.Length));
        await s.WaitIdleAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, s.Stats.KvBlocksUsed);
        Assert.Equal(0, s.Stats.Running);
    }

    [Fact]
    public async Task InvalidOrOversizedRequests_GetClearErrors()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions { KvMemoryBytes = 1 << 20 });
        async Task<Exception> Fail(GenerationRequest r) => await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await foreach (var unused in s.GenerateAsync(r, default))
            {
            }
        });
        Assert.Contains("empty", (await Fail(new GenerationRequest("a", [], 4, SamplingParams.Greedy))).Message);
        Assert.Contains("vocabulary", (await Fail(new GenerationRequest("a", [512], 4, SamplingParams.Greedy))).Message);
        Assert.Contains("max_tokens", (await Fail(new GenerationRequest("a", [1], 0, SamplingParams.Greedy))).Message);
        Assert.Contains("top_p", (await Fail(new GenerationRequest("a", [1], 4, new SamplingParams(1, 0, 0, null)))).Message);
        Assert.Contains("temperature", (await Fail(new GenerationRequest("a", [1], 4, new SamplingParams(-1, 1, 0, null)))).Message);
        var tooLong = await Fail(new GenerationRequest("a", [1], 5000, SamplingParams.Greedy));
        Assert.IsType<RequestTooLargeException>(tooLong);
        Assert.Contains("context limit", tooLong.Message);
        var overBudget = await Fail(new GenerationRequest("a", [1], 4000, SamplingParams.Greedy));
        Assert.IsType<RequestTooLargeException>(overBudget);
        Assert.Contains("KV budget", overBudget.Message);
    }

    [Fact]
    public async Task FullQueue_RefusesWithRetryAfter()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions { MaxQueuedRequests = 1, MaxRunningSequences = 1, MaxBatchTokens = 1, PrefillChunkTokens = 1 });
        using var cts = new CancellationTokenSource();
        var streams = Enumerable.Range(0, 8).Select(_ => s.GenerateAsync(new GenerationRequest("q", [500, 1], 2000, SamplingParams.Greedy), cts.Token).GetAsyncEnumerator()).ToList();
        // Admission happens synchronously in the first MoveNextAsync; don't await the tokens (the first runs long).
        var firsts = streams.Select(e => e.MoveNextAsync().AsTask()).ToList();
        var refused = new List<QueueFullException>();
        foreach (var f in firsts.Where(f => f.IsFaulted))
        {
            refused.Add(Assert.IsType<QueueFullException>(f.Exception!.InnerException));
        }
        Assert.NotEmpty(refused);
        Assert.All(refused, ex => Assert.Equal(TimeSpan.FromSeconds(1), ex.RetryAfter));
        Assert.InRange(refused.Count, 6, 7); // one queued, and one running unless the loop has not picked it up yet
        cts.Cancel();
        foreach (var (e, f) in streams.Zip(firsts))
        {
            try
            {
                await f;
                await e.DisposeAsync();
            }
            catch (Exception ex) when (ex is OperationCanceledException or QueueFullException)
            {
            }
        }
    }

    [Fact]
    public async Task SeededSampling_IsReproducible()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        async Task<int[]> Run(ulong seed)
        {
            var list = new List<int>();
            await foreach (var t in s.GenerateAsync(new GenerationRequest("s", [500, 4, 5], 12, new SamplingParams(0.9f, 0.95f, 40, seed)), default))
            {
                list.Add(t.TokenId);
            }
            return [.. list];
        }
        var a = await Run(42);
        Assert.Equal(a, await Run(42));
        Assert.NotEqual(a, await Run(43));
    }
}
