using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Moe;
using Distributed.Kernels.Cpu;

namespace Distributed.Coordinator.Tests.Model;

/// <summary>
/// Micro-batch ping-pong (issue #15) with in-process experts: steps split in two micro-batches give bitwise the logits of
/// the unsplit steps, for prefill and decode, whatever the split point; a dispatcher that answers late (the routed rows
/// "on the wire") sees the two micro-batches' dispatches overlap.
/// </summary>
public sealed class MicroBatchPingPongTests
{
    [Theory]
    [InlineData("tiny-maverick", 2)]
    [InlineData("tiny-maverick", 9)]
    [InlineData("tiny-scout", 4)]
    public async Task SplitSteps_AreBitwiseTheUnsplitSteps(string fixture, int sequences)
    {
        using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), new CpuKernelBackend(1));
        var prompts = BatchedSteps.Prompts(engine.Config.VocabSize, sequences, seed: sequences);
        var unsplit = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 4, MicroBatching.Off);
        var split = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 4, MicroBatching.From(2));
        Assert.Null(BatchedSteps.FirstDifference(unsplit, split));
    }

    // The micro-batches really interleave (each combine yields, so the other runs its layers meanwhile: KV appends and
    // kernels alternate between them) and the logits are still bitwise the unsplit ones.
    [Theory]
    [InlineData("tiny-maverick", 5)]
    [InlineData("tiny-scout", 3)]
    public async Task InterleavedMicroBatches_AreBitwiseTheUnsplitSteps(string fixture, int sequences)
    {
        string dir = TestPaths.Fixture(fixture);
        using var checkpoint = Distributed.Checkpoint.CheckpointReader.Open(dir);
        var backend = new CpuKernelBackend(1);
        using var local = new LocalExpertDispatcher(checkpoint, backend);
        var recorder = new OverlapRecorder();
        using var engine = Llama4Engine.Load(dir, backend, recorder.Wrap(local));
        var prompts = BatchedSteps.Prompts(engine.Config.VocabSize, sequences, seed: 3 * sequences);
        var unsplit = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 3, MicroBatching.Off);
        Assert.Equal(1, recorder.MaxInFlight);
        recorder.HoldUntilNextDispatch = engine.Config.MoeLayers[^1];
        var split = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 3, MicroBatching.From(2));
        Assert.Equal(2, recorder.MaxInFlight);
        Assert.Null(BatchedSteps.FirstDifference(unsplit, split));
    }

    // A micro-batch whose dispatch fails fails the step with ITS error (not the other micro-batch's cancellation), and
    // the engine serves the next step normally.
    [Fact]
    public async Task AFailingMicroBatch_FailsTheStepWithItsOwnError()
    {
        string dir = TestPaths.Fixture("tiny-maverick");
        using var checkpoint = Distributed.Checkpoint.CheckpointReader.Open(dir);
        var backend = new CpuKernelBackend(1);
        using var local = new LocalExpertDispatcher(checkpoint, backend);
        var recorder = new OverlapRecorder { FailAtDispatch = 3 };
        using var engine = Llama4Engine.Load(dir, backend, recorder.Wrap(local));
        var prompts = BatchedSteps.Prompts(engine.Config.VocabSize, 4, seed: 7);
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => BatchedSteps.RunAsync(engine, prompts, decodeSteps: 1, MicroBatching.From(2)));
        Assert.Equal("dispatch 3 fails", ex.Message);
        recorder.FailAtDispatch = 0;
        var unsplit = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 1, MicroBatching.Off);
        var split = await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 1, MicroBatching.From(2));
        Assert.Null(BatchedSteps.FirstDifference(unsplit, split));
    }

    // Prefill of 3 prompts = 16 tokens, then a decode step of 3 tokens: each split step dispatches every MoE layer twice.
    [Theory]
    [InlineData(3, 1000, 2)]
    [InlineData(1, 2, 2)]
    [InlineData(3, 10, 3)]
    [InlineData(3, 2, 4)]
    public async Task TheStepIsSplit_OnlyWithTwoSequencesAndEnoughTokens(int sequences, int minTokens, int expectedMicroBatches)
    {
        string dir = TestPaths.Fixture("tiny-maverick");
        using var checkpoint = Distributed.Checkpoint.CheckpointReader.Open(dir);
        var backend = new CpuKernelBackend(1);
        using var local = new LocalExpertDispatcher(checkpoint, backend);
        var recorder = new OverlapRecorder();
        using var engine = Llama4Engine.Load(dir, backend, recorder.Wrap(local));
        var prompts = BatchedSteps.Prompts(engine.Config.VocabSize, sequences, seed: 1);
        await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 1, MicroBatching.From(minTokens));
        Assert.Equal(expectedMicroBatches * engine.Config.MoeLayers.Count, recorder.Dispatches);
    }

    // Prompts of 4, 9 and 3 tokens (16): cutting after the first sequence leaves 4 | 12 (imbalance 8), after the second
    // 13 | 3 (imbalance 10), so the split is 4 | 12; the decode step (1 token each) splits 1 | 2.
    [Fact]
    public async Task TheSplitFallsAtTheSequenceBoundaryWithTheSmallestImbalance()
    {
        string dir = TestPaths.Fixture("tiny-maverick");
        using var checkpoint = Distributed.Checkpoint.CheckpointReader.Open(dir);
        var backend = new CpuKernelBackend(1);
        using var local = new LocalExpertDispatcher(checkpoint, backend);
        var recorder = new OverlapRecorder();
        using var engine = Llama4Engine.Load(dir, backend, recorder.Wrap(local));
        var prompts = BatchedSteps.Prompts(engine.Config.VocabSize, 3, seed: 1);
        Assert.Equal([4, 9, 3], prompts.Select(p => p.Length));
        await BatchedSteps.RunAsync(engine, prompts, decodeSteps: 1, MicroBatching.From(2));
        int layers = engine.Config.MoeLayers.Count;
        // The two micro-batches interleave, so compare each step's dispatch sizes as a sorted list.
        Assert.Equal(Enumerable.Repeat(4, layers).Concat(Enumerable.Repeat(12, layers)), recorder.Tokens.Take(2 * layers).Order());
        Assert.Equal(Enumerable.Repeat(1, layers).Concat(Enumerable.Repeat(2, layers)), recorder.Tokens.Skip(2 * layers).Order());
    }

    [Fact]
    public void MicroBatching_RefusesAThresholdBelowTwo()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => MicroBatching.From(1));
        Assert.False(MicroBatching.Off.Enabled);
    }

    // Counts dispatches, and dispatches in flight (dispatched, not yet combined) at once. With HoldUntilNextDispatch set
    // (to the last MoE layer), a combine of any other layer waits until the next dispatch starts, as if its rows were
    // still on the wire: the other micro-batch must then run its layers meanwhile (an unsplit step would wait forever).
    // Optionally fails the n-th dispatch.
    private sealed class OverlapRecorder
    {
        private int _inFlight;
        private int _dispatches;
        private readonly Dictionary<DispatchHandle, int> _numbers = [];
        private TaskCompletionSource _nextDispatch = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public int MaxInFlight { get; private set; }

        public List<int> Tokens { get; } = [];

        public int Dispatches => Volatile.Read(ref _dispatches);

        public int FailAtDispatch { get; set; }

        public int? HoldUntilNextDispatch { get; set; }

        public IExpertDispatcher Wrap(IExpertDispatcher inner) => new Dispatcher(this, inner);

        private sealed class Dispatcher(OverlapRecorder recorder, IExpertDispatcher inner) : IExpertDispatcher
        {
            public async ValueTask<DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, RoutingResult routing, CancellationToken cancellationToken)
            {
                int n = Interlocked.Increment(ref recorder._dispatches);
                Interlocked.Exchange(ref recorder._nextDispatch, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
                if (n == recorder.FailAtDispatch)
                {
                    throw new InvalidOperationException($"dispatch {n} fails");
                }
                var handle = await inner.DispatchAsync(layer, hidden, routing, cancellationToken);
                lock (recorder._numbers)
                {
                    recorder._numbers[handle] = n;
                    recorder.Tokens.Add(handle.Tokens);
                }
                int now = Interlocked.Increment(ref recorder._inFlight);
                lock (recorder)
                {
                    recorder.MaxInFlight = Math.Max(recorder.MaxInFlight, now);
                }
                return handle;
            }

            public async ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
            {
                int mine;
                lock (recorder._numbers)
                {
                    mine = recorder._numbers[handle];
                    recorder._numbers.Remove(handle);
                }
                while (recorder.HoldUntilNextDispatch is { } last && handle.Layer != last)
                {
                    // Read the signal before the count: a dispatch after the check completes this very signal.
                    var next = Volatile.Read(ref recorder._nextDispatch).Task;
                    if (recorder.Dispatches > mine)
                    {
                        break;
                    }
                    await next.WaitAsync(cancellationToken);
                }
                await Task.Yield();
                try
                {
                    await inner.CombineAsync(handle, output, cancellationToken);
                }
                finally
                {
                    Interlocked.Decrement(ref recorder._inFlight);
                }
            }
        }
    }
}
