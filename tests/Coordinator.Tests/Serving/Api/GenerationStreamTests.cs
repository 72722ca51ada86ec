using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Tests.Serving.Api;

[Trait("Category", "Unit")]
public sealed class GenerationStreamTests
{
    private static readonly Distributed.Coordinator.Serving.Tokenization.Llama4Tokenizer Tokenizer = ApiTestServer.Tokenizer;

    private static GenerationRequest Request(int maxTokens) => new(Guid.NewGuid().ToString("N"), [500], maxTokens, SamplingParams.Greedy);

    private static async Task<(List<GenerationDelta> Deltas, GenerationStream Stream)> DrainAsync(FakeGenerationScheduler s, GenerationRequest r, params string[] stop)
    {
        var stream = await GenerationStream.StartAsync(s, r, Tokenizer, stop, default);
        var deltas = new List<GenerationDelta>();
        while (await stream.NextAsync() is { } d)
        {
            deltas.Add(d);
        }
        await stream.DisposeAsync();
        return (deltas, stream);
    }

    private static int ByteToken(byte b)
    {
        for (int id = 0; id < Tokenizer.VocabSize; id++)
        {
            if (!Tokenizer.IsSpecialToken(id) && Tokenizer.GetTokenBytes(id).SequenceEqual(new[] { b }))
            {
                return id;
            }
        }
        throw new InvalidOperationException($"no single-byte token for 0x{b:X2}");
    }

    [Fact]
    public async Task Tokens_DecodeToText_LastDeltaCarriesLength()
    {
        int[] ids = Tokenizer.Encode("Hello, world");
        var s = new FakeGenerationScheduler { Script = _ => ids };
        var (deltas, stream) = await DrainAsync(s, Request(ids.Length));
        Assert.Equal("Hello, world", string.Concat(deltas.Select(d => d.Text)));
        Assert.Equal(ids, deltas.SelectMany(d => d.TokenIds));
        Assert.All(deltas.SkipLast(1), d => Assert.Null(d.Finish));
        Assert.Equal("length", deltas[^1].Finish);
        Assert.Equal(ids.Length, stream.CompletionTokens);
        Assert.Equal(1, stream.PromptTokens);
    }

    [Fact]
    public async Task MultiByteCharacterSplitOverTokens_NeverSentInHalves()
    {
        // "é" is C3 A9 in UTF-8: two byte tokens, the first produces no text.
        int[] ids = [ByteToken((byte)'x'), ByteToken(0xC3), ByteToken(0xA9), ByteToken((byte)'y')];
        var s = new FakeGenerationScheduler { Script = _ => ids };
        var (deltas, _) = await DrainAsync(s, Request(ids.Length));
        Assert.Equal(["x", "", "é", "y"], deltas.Select(d => d.Text));
    }

    [Fact]
    public async Task EndOfTurnToken_CountedButProducesNoText_FinishStop()
    {
        int[] ids = [.. Tokenizer.Encode("ok"), Tokenizer.EndOfTurnTokenId];
        var s = new FakeGenerationScheduler { Script = _ => ids };
        var (deltas, stream) = await DrainAsync(s, Request(50));
        Assert.Equal("ok", string.Concat(deltas.Select(d => d.Text)));
        Assert.Equal("stop", deltas[^1].Finish);
        Assert.Equal(ids.Length, stream.CompletionTokens);
    }

    [Fact]
    public async Task StopSequenceAcrossTokens_TextCutAndSequenceCancelled()
    {
        string text = "one two STOP three four";
        int[] ids = text.Select(c => ByteToken((byte)c)).ToArray();
        var s = new FakeGenerationScheduler { Script = _ => ids };
        var r = Request(ids.Length);
        var (deltas, stream) = await DrainAsync(s, r, "STOP", "zzz");
        Assert.Equal("one two ", string.Concat(deltas.Select(d => d.Text)));
        Assert.Equal("stop", deltas[^1].Finish);
        // Tokens up to and including the P of STOP were generated; nothing after it was consumed.
        Assert.Equal("one two STOP".Length, stream.CompletionTokens);
        Assert.True(await s.EndedTask(r.Id).Task.WaitAsync(TimeSpan.FromSeconds(10)), "the scheduler's token was not cancelled");
    }

    [Fact]
    public async Task HeldBackPrefix_ReleasedAtLength()
    {
        int[] ids = "ab ST".Select(c => ByteToken((byte)c)).ToArray();
        var s = new FakeGenerationScheduler { Script = _ => ids };
        var (deltas, _) = await DrainAsync(s, Request(ids.Length), "STOP");
        Assert.Equal("", deltas[^2].Text);
        Assert.Equal("ST", deltas[^1].Text);
        Assert.Equal("length", deltas[^1].Finish);
        Assert.Equal("ab ST", string.Concat(deltas.Select(d => d.Text)));
    }

    [Fact]
    public async Task AdmissionFailure_SurfacesFromStart()
    {
        var s = new FakeGenerationScheduler { Admission = _ => new QueueFullException("full", TimeSpan.FromSeconds(3)) };
        var ex = await Assert.ThrowsAsync<QueueFullException>(() => GenerationStream.StartAsync(s, Request(4), Tokenizer, [], default));
        Assert.Equal(TimeSpan.FromSeconds(3), ex.RetryAfter);
    }

    [Fact]
    public async Task DisposedEarly_CancelsTheSequence()
    {
        var s = new FakeGenerationScheduler { TokenDelay = TimeSpan.FromMilliseconds(20) };
        var r = Request(1000);
        var stream = await GenerationStream.StartAsync(s, r, Tokenizer, [], default);
        _ = await stream.NextAsync();
        _ = await stream.NextAsync();
        await stream.DisposeAsync();
        Assert.True(await s.EndedTask(r.Id).Task.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task SchedulerEndsWithoutFinish_IsAContractViolation()
    {
        var s = new BrokenScheduler();
        var stream = await GenerationStream.StartAsync(s, Request(4), Tokenizer, [], default);
        Assert.Null((await stream.NextAsync())!.Value.Finish);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await stream.NextAsync());
        await stream.DisposeAsync();
    }

    private sealed class BrokenScheduler : IGenerationScheduler
    {
        public int VocabSize => 512;

        public int MaxContextTokens => 4096;

        public async IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.Yield();
            yield return new GeneratedToken(65, 0, null);
        }
    }
}
