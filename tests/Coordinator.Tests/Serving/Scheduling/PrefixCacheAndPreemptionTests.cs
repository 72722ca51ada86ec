using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels.Cpu;
using Xunit.Abstractions;

namespace Distributed.Coordinator.Tests.Serving.Scheduling;

/// <summary>
/// The scheduler's KV management must never change a token: prefix-cache hits (including chunked layers whose window
/// straddles block and chunk boundaries), preemption under a tiny KV budget, and n choices sharing the prompt's blocks
/// copy-on-write all give the tokens (and logprobs, bit for bit) of the plain run.
/// </summary>
[Trait("Category", "Integration")]
public sealed class PrefixCacheAndPreemptionTests(ITestOutputHelper output) : IDisposable
{
    private readonly CpuKernelBackend _backend = new();

    public void Dispose() => _backend.Dispose();

    private static readonly SamplingParams Sampled = new(0.8f, 0.95f, 0, 1234);

    private sealed record Run(int[] Tokens, float[] Logprobs, FinishReason? Finish);

    private static async Task<Run[]> CollectAsync(IGenerationScheduler s, GenerationRequest request)
    {
        var tokens = new List<int>[request.N];
        var logprobs = new List<float>[request.N];
        var finish = new FinishReason?[request.N];
        for (int i = 0; i < request.N; i++)
        {
            tokens[i] = [];
            logprobs[i] = [];
        }
        await foreach (var t in s.GenerateAsync(request, default))
        {
            Assert.Equal(tokens[t.Choice].Count, t.Index);
            tokens[t.Choice].Add(t.TokenId);
            if (t.Logprobs is { } lp)
            {
                logprobs[t.Choice].Add(lp.Logprob);
                logprobs[t.Choice].AddRange(lp.TopLogprobs);
            }
            finish[t.Choice] = t.Finish;
        }
        return [.. Enumerable.Range(0, request.N).Select(i => new Run([.. tokens[i]], [.. logprobs[i]], finish[i]))];
    }

    private static GenerationRequest Request(int[] prompt, int max, SamplingParams sampling, int n = 1, bool ignoreEos = false) =>
        new(Guid.NewGuid().ToString("N"), prompt, max, sampling) { N = n, Logprobs = 3, IgnoreEos = ignoreEos };

    private static int[] RandomPrompt(Random rng, int length, int vocab) => [500, .. Enumerable.Range(0, length - 1).Select(_ => rng.Next(vocab - 16))];

    [Theory]
    [InlineData("tiny-maverick", 16)]
    [InlineData("tiny-maverick", 5)]
    [InlineData("tiny-scout", 16)]
    [InlineData("tiny-scout", 3)]
    public async Task PrefixCache_SharedPrefixes_SameTokensAndLogprobsAsWithoutIt(string fixture, int blockSize)
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), _backend);
        var rng = new Random(blockSize);
        int vocab = engine.Config.VocabSize;
        // Prefix lengths around the chunk size (16) and block multiples: the chunked layers' window then starts inside or
        // at the edge of a block, and some suffixes cross into the next chunk.
        var prompts = new List<int[]>();
        foreach (int prefixLength in new[] { 15, 16, 17, 33, 40 })
        {
            var prefix = RandomPrompt(rng, prefixLength, vocab);
            foreach (int suffix in new[] { 1, 4, 19 })
            {
                prompts.Add([.. prefix, .. Enumerable.Range(0, suffix).Select(_ => rng.Next(vocab - 16))]);
            }
            prompts.Add(prefix);
        }
        var options = new SchedulerOptions { KvBlockSize = blockSize, PrefillChunkTokens = 7, MaxBatchTokens = 64 };
        await using var cached = new ContinuousBatchScheduler(engine, options);
        await using var plain = new ContinuousBatchScheduler(engine, new SchedulerOptions { KvBlockSize = blockSize, PrefillChunkTokens = 7, MaxBatchTokens = 64, PrefixCaching = false });
        foreach (var sampling in new[] { SamplingParams.Greedy, Sampled })
        {
            // One after another (every later prompt can hit), then all at once (hits only for those admitted later).
            var sequential = new List<Run>();
            foreach (var p in prompts)
            {
                sequential.Add((await CollectAsync(cached, Request(p, 20, sampling)))[0]);
            }
            var together = (await Task.WhenAll(prompts.Select(p => CollectAsync(cached, Request(p, 20, sampling))))).Select(r => r[0]).ToList();
            for (int i = 0; i < prompts.Count; i++)
            {
                var reference = (await CollectAsync(plain, Request(prompts[i], 20, sampling)))[0];
                Assert.Equal(reference.Tokens, sequential[i].Tokens);
                Assert.Equal(reference.Logprobs, sequential[i].Logprobs);
                Assert.Equal(reference.Tokens, together[i].Tokens);
                Assert.Equal(reference.Logprobs, together[i].Logprobs);
            }
        }
        var stats = cached.Stats;
        output.WriteLine($"{fixture} block {blockSize}: prefix hit {stats.PrefixHitTokens}/{stats.PrefixQueriedTokens} tokens ({stats.PrefixHitRate:P1}), {stats.KvBlocksCached} blocks cached");
        Assert.True(stats.PrefixHitTokens > stats.PrefixQueriedTokens / 4, "most of the shared prefixes should have been found");
        Assert.Equal(0, plain.Stats.PrefixHitTokens);
        Assert.True(stats.KvBlocksCached > 0);
        Assert.Equal(0, stats.KvBlocksUsed);
    }

    [Fact]
    public async Task PrefixCache_EvictsLeastRecentlyUsedBlocksWhenFull_AndStaysCorrect()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        var rng = new Random(3);
        // 96 blocks of 4 KiB: each 40-token request keeps ~8 blocks after it ends, so later requests evict earlier prefixes.
        await using var cached = new ContinuousBatchScheduler(engine, new SchedulerOptions { KvMemoryBytes = 96 * 4096, PrefillChunkTokens = 16, MaxBatchTokens = 32, MaxRunningSequences = 16 });
        await using var plain = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefixCaching = false });
        var prompts = Enumerable.Range(0, 24).Select(_ => RandomPrompt(rng, 40, 512)).ToArray();
        foreach (var p in prompts.Concat(prompts.Reverse()))
        {
            Assert.Equal((await CollectAsync(plain, Request(p, 8, SamplingParams.Greedy)))[0].Tokens,
                (await CollectAsync(cached, Request(p, 8, SamplingParams.Greedy)))[0].Tokens);
        }
        var stats = cached.Stats;
        output.WriteLine($"evictions {stats.PrefixEvictions}, hits {stats.PrefixHitTokens}/{stats.PrefixQueriedTokens}");
        Assert.True(stats.PrefixEvictions > 0);
        Assert.True(stats.PrefixHitTokens > 0, "the most recently used prefixes (the reversed order's first) should still be cached");
    }

    [Fact]
    public async Task Preemption_TinyKvBudget_EverySequenceKeepsItsTokens()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        var rng = new Random(5);
        var prompts = Enumerable.Range(0, 6).Select(i => RandomPrompt(rng, 6 + 5 * i, 512)).ToArray();
        await using var roomy = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefixCaching = false });
        var alone = new List<Run>();
        foreach (var (p, i) in prompts.Select((p, i) => (p, i)))
        {
            alone.Add((await CollectAsync(roomy, Request(p, 48, i % 2 == 0 ? SamplingParams.Greedy : Sampled with { Seed = (ulong)i }, ignoreEos: true)))[0]);
        }
        foreach (bool prefixCaching in new[] { false, true })
        {
            // 32 blocks of 4 KiB (tiny-maverick: 6 layers, 16 positions per block): one sequence of 80 positions fits alone
            // (NoPE layer 5 blocks, each chunked layer at most 3), six together do not.
            await using var tight = new ContinuousBatchScheduler(engine, new SchedulerOptions
            {
                KvMemoryBytes = 32 * 4096, PrefillChunkTokens = 4, MaxBatchTokens = 16, MaxRunningSequences = 6, PrefixCaching = prefixCaching,
            });
            var runs = await Task.WhenAll(prompts.Select((p, i) => CollectAsync(tight, Request(p, 48, i % 2 == 0 ? SamplingParams.Greedy : Sampled with { Seed = (ulong)i }, ignoreEos: true))));
            var stats = tight.Stats;
            output.WriteLine($"prefix caching {prefixCaching}: {stats.Preemptions} preemptions, {stats.Steps} steps, prefix hits {stats.PrefixHitTokens}/{stats.PrefixQueriedTokens}");
            for (int i = 0; i < prompts.Length; i++)
            {
                // Named, so that a failure says which sequence, with which cache setting, after how many preemptions.
                Assert.True(alone[i].Tokens.SequenceEqual(runs[i][0].Tokens),
                    $"sequence {i} (prefix caching {prefixCaching}, {stats.Preemptions} preemptions): [{string.Join(",", runs[i][0].Tokens)}] vs alone [{string.Join(",", alone[i].Tokens)}]");
                Assert.Equal(alone[i].Logprobs, runs[i][0].Logprobs);
            }
            Assert.True(stats.Preemptions > 0, "the budget is too small for all sequences at once: some must have been preempted");
            Assert.Equal(0, stats.KvBlocksUsed);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task NChoices_EqualSeparatelySeededRequests_SharingThePromptCopyOnWrite(bool prefixCaching)
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions { PrefixCaching = prefixCaching });
        var rng = new Random(9);
        // 21 and 32 tokens: the prompt's last block partial (copied on the first write) and full.
        foreach (int length in new[] { 21, 32 })
        {
            var prompt = RandomPrompt(rng, length, 512);
            var sampling = new SamplingParams(0.9f, 1f, 0, 77) { PresencePenalty = 0.4f, RepetitionPenalty = 1.2f };
            var together = await CollectAsync(s, Request(prompt, 24, sampling, n: 4));
            for (int i = 0; i < 4; i++)
            {
                var separate = (await CollectAsync(s, Request(prompt, 24, sampling with { Seed = 77ul + (ulong)i })))[0];
                Assert.Equal(separate.Tokens, together[i].Tokens);
                Assert.Equal(separate.Logprobs, together[i].Logprobs);
                Assert.Equal(separate.Finish, together[i].Finish);
            }
            Assert.True(together.Select(r => string.Join(",", r.Tokens)).Distinct().Count() > 1, "different seeds should give different samples");
        }
        Assert.Equal(0, s.Stats.KvBlocksUsed);
    }

    [Fact]
    public async Task Logprobs_AreTheLogSoftmaxOfTheProcessedLogits_PenaltiesBiasMinTokensAsVllmDefinesThem()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        var prompt = new[] { 500, 17, 23, 99, 17, 301, 5, 23 };
        int[] eos = [.. engine.Config.EosTokenIds];
        var cases = new[]
        {
            SamplingParams.Greedy with { LogitBias = new Dictionary<int, float> { [17] = 5f, [42] = -100f, [300] = 2.5f } },
            new SamplingParams(0.7f, 1f, 0, 3) { RepetitionPenalty = 1.3f, FrequencyPenalty = 0.5f, PresencePenalty = 0.3f, MinTokens = 4 },
            new SamplingParams(1.3f, 1f, 0, 8) { RepetitionPenalty = 0.8f, FrequencyPenalty = -0.4f, PresencePenalty = 1.5f, LogitBias = new Dictionary<int, float> { [7] = 3f } },
            SamplingParams.Greedy with { FrequencyPenalty = 2f, PresencePenalty = 2f },
        };
        foreach (var sampling in cases)
        {
            var request = new GenerationRequest("lp", prompt, 12, sampling) { Logprobs = 5 };
            var tokens = new List<GeneratedToken>();
            await foreach (var t in s.GenerateAsync(request, default))
            {
                tokens.Add(t);
            }
            int[] generated = [.. tokens.Select(t => t.TokenId)];
            float[] rows = await ReferenceLogits.AllRowsAsync(engine, [.. prompt, .. generated]);
            int vocab = engine.Config.VocabSize;
            for (int i = 0; i < tokens.Count; i++)
            {
                var row = rows.AsSpan((prompt.Length - 1 + i) * vocab, vocab);
                var z = ReferenceLogits.Process(row, sampling, prompt, generated[..i], eos);
                var expected = ReferenceLogits.LogSoftmax(z, sampling.Temperature);
                var lp = tokens[i].Logprobs!;
                Assert.Equal(expected[tokens[i].TokenId], lp.Logprob, 4);
                var top = Enumerable.Range(0, vocab).OrderByDescending(id => z[id]).ThenBy(id => id).Take(5).ToArray();
                Assert.Equal(top, lp.TopIds);
                for (int j = 0; j < 5; j++)
                {
                    Assert.Equal(expected[top[j]], lp.TopLogprobs[j], 4);
                }
                if (sampling.Temperature == 0)
                {
                    Assert.Equal(top[0], tokens[i].TokenId);
                }
                if (i < sampling.MinTokens)
                {
                    Assert.DoesNotContain(tokens[i].TokenId, eos);
                }
            }
        }
    }

    [Fact]
    public async Task IgnoreEosAndStopTokenIds_DecideWhereAChoiceEnds()
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), _backend);
        await using var s = new ContinuousBatchScheduler(engine, new SchedulerOptions());
        int[] prompt = [500, 3, 4, 5];
        var free = (await CollectAsync(s, new GenerationRequest("a", prompt, 40, SamplingParams.Greedy) { IgnoreEos = true }))[0];
        Assert.Equal(40, free.Tokens.Length);
        Assert.Equal(FinishReason.Length, free.Finish);
        int stopAt = 5;
        var stopped = (await CollectAsync(s, new GenerationRequest("b", prompt, 40, SamplingParams.Greedy, [free.Tokens[stopAt]]) { IgnoreEos = true }))[0];
        int first = Array.IndexOf(free.Tokens, free.Tokens[stopAt]);
        Assert.Equal(free.Tokens[..(first + 1)], stopped.Tokens);
        Assert.Equal(FinishReason.Stop, stopped.Finish);
    }
}
