using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Moe;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.Extensions.Time.Testing;

namespace Distributed.Coordinator.Tests.Distribution;

/// <summary>
/// <see cref="GrpcExpertDispatcher"/> against fake workers (<see cref="IWorkerConnection"/>): every case checks the
/// combined output bitwise against the reference (fp32 wire), whatever the split, chunking, failover or retry.
/// </summary>
public sealed class GrpcExpertDispatcherTests
{
    private const int Hidden = 8;
    private const int Experts = 8;
    private const int Layer = 1;
    private static readonly ModelDescriptor Model = new("fake", Hidden, 4, 2, Experts, [Layer]);

    [Fact]
    public async Task TwoWorkers_TopTwo_CombineMatchesTheReferenceBitwise()
    {
        var a = new FakeWorker("a", 1, experts: [0, 1, 2, 3]);
        var b = new FakeWorker("b", 1, experts: [4, 5, 6, 7]);
        var (dispatcher, _) = Create([a, b]);
        var (hidden, routing) = Batch(tokens: 5, topK: 2, seed: 1);
        var output = new float[5 * Hidden];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, output, CancellationToken.None);
        Assert.Equal(Reference(hidden, routing), output);
        Assert.True(a.Requests.Count > 0 && b.Requests.Count > 0);

        // CombineAddAsync adds the same rows to what the output held.
        var added = Enumerable.Range(0, output.Length).Select(i => i * 0.25f).ToArray();
        var expected = added.Zip(Reference(hidden, routing), (x, r) => x + r).ToArray();
        handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAddAsync(handle, added, CancellationToken.None);
        Assert.Equal(expected, added);
    }

    [Fact]
    public async Task TopOne_CombineAdd_EqualsSharedPlusCombine()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)]);
        var (dispatcher, _) = Create([a]);
        var (hidden, routing) = Batch(tokens: 9, topK: 1, seed: 2);
        var shared = Enumerable.Range(0, 9 * Hidden).Select(i => MathF.Sin(i)).ToArray();
        var routed = new float[shared.Length];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, routed, CancellationToken.None);
        var expected = shared.Zip(routed, (s, r) => s + r).ToArray();
        handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAddAsync(handle, shared, CancellationToken.None);
        Assert.Equal(expected, shared);
    }

    [Fact]
    public async Task RowsAboveTheWorkersLimit_GoInSeveralRequestsOfAtMostMaxRows()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)], maxRows: 3);
        var (dispatcher, _) = Create([a]);
        var (hidden, routing) = Batch(tokens: 10, topK: 2, seed: 3);
        var output = new float[10 * Hidden];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, output, CancellationToken.None);
        Assert.Equal(Reference(hidden, routing), output);
        Assert.True(a.Requests.Count >= 7, $"{a.Requests.Count} requests for 20 rows at 3 per request");
        Assert.All(a.Requests, r => Assert.InRange((int)r.Rows, 1, 3));
        Assert.Equal(20, a.Requests.Sum(r => (int)r.Rows));
    }

    [Fact]
    public async Task ALargeGroupOfAReplicatedExpert_IsSplitOverItsHolders()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)]);
        var b = new FakeWorker("b", 1, experts: [.. Enumerable.Range(0, Experts)]);
        var (dispatcher, _) = Create([a, b], splitRows: 4);
        // Every token routed to expert 5: one group of 12 rows.
        var (hidden, _) = Batch(tokens: 12, topK: 1, seed: 4);
        var routing = new RoutingResult(Enumerable.Repeat(5, 12).ToArray(), Enumerable.Range(0, 12).Select(i => 0.5f + i / 32f).ToArray(), 1);
        var output = new float[12 * Hidden];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, output, CancellationToken.None);
        Assert.Equal(Reference(hidden, routing), output);
        Assert.Equal(6, a.Requests.Sum(r => (int)r.Rows));
        Assert.Equal(6, b.Requests.Sum(r => (int)r.Rows));
    }

    [Fact]
    public async Task AReplicaThatCannotBeReached_ItsRowsGoToTheOtherHolder_AndItIsNotChosenAgain()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)]) { Behaviour = Behaviour.FailSend };
        var b = new FakeWorker("b", 1, experts: [.. Enumerable.Range(0, Experts)]);
        var (dispatcher, placement) = Create([a, b]);
        var (hidden, routing) = Batch(tokens: 16, topK: 1, seed: 5);
        for (int round = 0; round < 3; round++)
        {
            var output = new float[16 * Hidden];
            var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
            await dispatcher.CombineAsync(handle, output, CancellationToken.None);
            Assert.Equal(Reference(hidden, routing), output);
        }
        Assert.Equal(1, a.SendAttempts);
        Assert.True(dispatcher.Suspicion.IsSuspect(placement.Table, 0));
        Assert.True(dispatcher.ResentSlices > 0);
        Assert.Equal(0, dispatcher.Recoveries);
        Assert.Equal(["a"], placement.Reported);
    }

    [Fact]
    public async Task AWorkerPastTheDeadline_IsLost_AndItsExpertsAreRePlaced()
    {
        var time = new FakeTimeProvider();
        var a = new FakeWorker("a", 1, experts: [0, 1, 2, 3]) { Behaviour = Behaviour.NeverAnswer };
        var b = new FakeWorker("b", 1, experts: [4, 5, 6, 7]);
        var (dispatcher, placement) = Create([a, b], time: time);
        // The recovery re-places every expert on b (plan 2), as the placement authority would.
        var bAll = new FakeWorker("b", 2, experts: [.. Enumerable.Range(0, Experts)]);
        placement.Recovered = Table([bAll]);
        b.Accept(2, Enumerable.Range(0, Experts));
        var (hidden, routing) = Batch(tokens: 8, topK: 1, seed: 6);
        var output = new float[8 * Hidden];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        var combine = dispatcher.CombineAsync(handle, output, CancellationToken.None).AsTask();
        Assert.False(combine.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(31));
        await combine.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Reference(hidden, routing), output);
        Assert.Equal(1, dispatcher.Recoveries);
        Assert.Equal(1, a.Abandoned);
        Assert.Equal(["a"], placement.RecoveredWorkers);
    }

    [Fact]
    public async Task AStalePlanVersion_WaitsForTheNewerTable_AndResends()
    {
        var a = new FakeWorker("a", 2, experts: [.. Enumerable.Range(0, Experts)]);
        var (dispatcher, placement) = Create([a]);
        // The coordinator still routes with plan 1; the worker moved on to plan 2.
        placement.Table = Table([new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)])]);
        placement.Newer = Table([a]);
        var (hidden, routing) = Batch(tokens: 4, topK: 1, seed: 7);
        var output = new float[4 * Hidden];
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        await dispatcher.CombineAsync(handle, output, CancellationToken.None);
        Assert.Equal(Reference(hidden, routing), output);
        Assert.Equal([1UL, 2UL], a.Requests.Select(r => r.PlanVersion).Distinct());
        Assert.True(dispatcher.ResentSlices > 0);
        Assert.Equal(1, placement.WaitedForNewer);
    }

    [Fact]
    public async Task FixedPlacement_TheOnlyHolderLost_FailsWithItsStatus()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)]) { Behaviour = Behaviour.BreakStream };
        var (dispatcher, placement) = Create([a]);
        placement.CanRecoverValue = false;
        var (hidden, routing) = Batch(tokens: 3, topK: 1, seed: 8);
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(() => dispatcher.CombineAsync(handle, new float[3 * Hidden], CancellationToken.None).AsTask());
        Assert.Equal(StatusCode.Unavailable, ex.Status);
        Assert.Equal("a", ex.WorkerId);
    }

    [Fact]
    public async Task ABadRequestRefusal_IsNotRetried()
    {
        var a = new FakeWorker("a", 1, experts: [.. Enumerable.Range(0, Experts)]) { Behaviour = Behaviour.RefuseInvalid };
        var (dispatcher, _) = Create([a]);
        var (hidden, routing) = Batch(tokens: 3, topK: 1, seed: 9);
        var handle = await dispatcher.DispatchAsync(Layer, hidden, routing, CancellationToken.None);
        var ex = await Assert.ThrowsAsync<ExpertDispatchException>(() => dispatcher.CombineAsync(handle, new float[3 * Hidden], CancellationToken.None).AsTask());
        Assert.Equal(StatusCode.InvalidArgument, ex.Status);
        Assert.Single(a.Requests);
    }

    [Fact]
    public void Suspicion_LastsItsDurationUnderItsPlanVersion()
    {
        var time = new FakeTimeProvider();
        var suspicion = new WorkerSuspicion(TimeSpan.FromSeconds(10), time);
        var a = new FakeWorker("a", 1, experts: [0]);
        var v1 = Table([a]);
        suspicion.Suspect(1, a.Worker);
        Assert.True(suspicion.IsSuspect(v1, 0));
        Assert.False(suspicion.IsSuspect(Table([new FakeWorker("a", 2, experts: [0])]), 0));
        time.Advance(TimeSpan.FromSeconds(9));
        Assert.True(suspicion.IsSuspect(v1, 0));
        time.Advance(TimeSpan.FromSeconds(2));
        Assert.False(suspicion.IsSuspect(v1, 0));
        suspicion.Suspect(1, a.Worker);
        suspicion.Clear(a.Worker);
        Assert.False(suspicion.IsSuspect(v1, 0));
    }

    [Fact]
    public void ReplicaSelector_PicksTheLessLoaded_AvoidsSuspects_FallsBackToThePrimary()
    {
        var time = new FakeTimeProvider();
        var suspicion = new WorkerSuspicion(TimeSpan.FromSeconds(10), time);
        var a = new FakeWorker("a", 1, experts: [0, 1]);
        var b = new FakeWorker("b", 1, experts: [0, 1]);
        var table = Table([a, b]);
        var load = new Dictionary<string, long> { ["a"] = 100, ["b"] = 0 };
        var selector = new ReplicaSelector(splitRows: 1000, suspicion, id => load[id], new Random(1));
        var picked = selector.Assign(table, Layer, [new RowSlice(0, 0, 2), new RowSlice(1, 2, 3)]);
        Assert.Equal([1], picked.Keys);
        Assert.Equal([new RowSlice(0, 0, 2), new RowSlice(1, 2, 3)], picked[1]);

        suspicion.Suspect(1, b.Worker);
        Assert.Equal([0], selector.Assign(table, Layer, [new RowSlice(0, 0, 2)]).Keys);
        suspicion.Suspect(1, a.Worker);
        Assert.Equal([0], selector.Assign(table, Layer, [new RowSlice(0, 0, 2)]).Keys);

        var missing = Table([new FakeWorker("c", 1, experts: [0])]);
        var ex = Assert.Throws<ExpertDispatchException>(() => selector.Assign(missing, Layer, [new RowSlice(3, 0, 1)]));
        Assert.Equal(StatusCode.FailedPrecondition, ex.Status);
    }

    // --- helpers ---

    private static (GrpcExpertDispatcher Dispatcher, FakePlacement Placement) Create(FakeWorker[] workers, int splitRows = 32, TimeProvider? time = null)
    {
        var options = new DistributionOptions { WireDType = WireDType.Fp32, SplitRows = splitRows, ClusterToken = "t", DispatchTimeout = TimeSpan.FromSeconds(30) };
        var source = new FakeSource(options, workers);
        var placement = new FakePlacement(Table(workers));
        return (new GrpcExpertDispatcher(placement, source, time: time, random: new Random(15)), placement);
    }

    private static ExpertPlacementTable Table(FakeWorker[] workers) => ExpertPlacementTable.FromHandshakes(Model, [.. workers.Select(w => (w.Worker, w.Hello))]);

    private static (float[] Hidden, RoutingResult Routing) Batch(int tokens, int topK, int seed)
    {
        var rng = new Random(seed);
        var hidden = Enumerable.Range(0, tokens * Hidden).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var ids = new int[tokens * topK];
        var weights = new float[tokens * topK];
        for (int t = 0; t < tokens; t++)
        {
            var chosen = Enumerable.Range(0, Experts).OrderBy(_ => rng.Next()).Take(topK).ToArray();
            for (int s = 0; s < topK; s++)
            {
                ids[t * topK + s] = chosen[s];
                weights[t * topK + s] = (float)rng.NextDouble();
            }
        }
        return (hidden, new RoutingResult(ids, weights, topK));
    }

    // output[t] = Σ_s f(expert, score · hidden[t]), slot sum from slot 0 (as DispatchPlan.Combine sums).
    private static float[] Reference(float[] hidden, RoutingResult routing)
    {
        int tokens = routing.Tokens;
        var output = new float[tokens * Hidden];
        var row = new float[Hidden];
        for (int t = 0; t < tokens; t++)
        {
            for (int s = 0; s < routing.TopK; s++)
            {
                int e = routing.ExpertIds.Span[t * routing.TopK + s];
                float score = routing.Weights.Span[t * routing.TopK + s];
                for (int j = 0; j < Hidden; j++)
                {
                    row[j] = FakeWorker.Expert(e, hidden[t * Hidden + j] * score);
                }
                for (int j = 0; j < Hidden; j++)
                {
                    output[t * Hidden + j] = s == 0 ? row[j] : output[t * Hidden + j] + row[j];
                }
            }
        }
        return output;
    }

    private enum Behaviour
    {
        Answer,
        FailSend,
        NeverAnswer,
        BreakStream,
        RefuseInvalid,
    }

    private sealed class FakeWorker : IWorkerConnection
    {
        private readonly HashSet<ulong> _versions;
        private long _nextId;

        public FakeWorker(string id, ulong version, int[] experts, uint maxRows = 0)
        {
            Worker = new WorkerEndpoint(id, $"http://{id}.fake:1");
            Hello = new HelloReply { WorkerId = id, PlanVersion = version, MaxRowsPerDispatch = maxRows, HiddenSize = Hidden };
            Hello.Shards.Add(new ExpertShard { Layer = Layer, Experts = { experts.Select(e => (uint)e) } });
            _versions = [version];
        }

        public WorkerEndpoint Worker { get; }
        public HelloReply Hello { get; }
        public Exception? Broken => null;
        public Behaviour Behaviour { get; set; }
        public List<ExpertRequest> Requests { get; } = [];
        public int SendAttempts { get; private set; }
        public int Abandoned { get; private set; }

        // A stand-in expert: any fixed elementwise function of the (scaled) input row.
        public static float Expert(int e, float x) => x * (e + 1) + 0.5f * e;

        public void Accept(ulong version, IEnumerable<int> experts)
        {
            _versions.Add(version);
            Hello.Shards[0].Experts.Clear();
            Hello.Shards[0].Experts.AddRange(experts.Select(e => (uint)e));
        }

        public RowLease RentRows(int bytes) => RowLease.Inline(bytes);

        public Task<Task<TensorFrame<ExpertReply>>> SendAsync(ExpertRequest header, RowLease rows, CancellationToken cancellationToken)
        {
            SendAttempts++;
            if (Behaviour == Behaviour.FailSend)
            {
                throw new ExpertDispatchException(StatusCode.Unavailable, $"worker {Worker.WorkerId} is gone", Worker.WorkerId);
            }
            header.RequestId = (ulong)Interlocked.Increment(ref _nextId);
            Requests.Add(header.Clone());
            var reply = new ExpertReply { RequestId = header.RequestId, Status = new ReplyStatus(), Dtype = header.Dtype, Rows = header.Rows, HiddenSize = header.HiddenSize };
            switch (Behaviour)
            {
                case Behaviour.NeverAnswer:
                    return Task.FromResult(new TaskCompletionSource<TensorFrame<ExpertReply>>().Task);
                case Behaviour.BreakStream:
                    return Task.FromResult(Task.FromException<TensorFrame<ExpertReply>>(
                        new ExpertDispatchException(StatusCode.Unavailable, $"stream to {Worker.WorkerId} ended", Worker.WorkerId)));
                case Behaviour.RefuseInvalid:
                    reply.Status = new ReplyStatus { Code = (int)StatusCode.InvalidArgument, Message = "bad rows" };
                    return Task.FromResult(Task.FromResult(new TensorFrame<ExpertReply>(reply, ReadOnlyMemory<byte>.Empty)));
            }
            if (!_versions.Contains(header.PlanVersion))
            {
                reply.Status = new ReplyStatus { Code = (int)StatusCode.FailedPrecondition, Message = "stale", Violations = { new FieldViolation { Field = "plan_version", Description = "old" } } };
                return Task.FromResult(Task.FromResult(new TensorFrame<ExpertReply>(reply, ReadOnlyMemory<byte>.Empty)));
            }
            var input = new float[header.Rows * Hidden];
            WireCodec.Decode(rows.InlineMemory.Span[..(input.Length * 4)], header.Dtype, input);
            int r = 0;
            foreach (var segment in header.Segments)
            {
                Assert.Contains(segment.Expert, Hello.Shards[0].Experts);
                for (int i = 0; i < segment.Rows; i++, r++)
                {
                    for (int j = 0; j < Hidden; j++)
                    {
                        input[r * Hidden + j] = Expert((int)segment.Expert, input[r * Hidden + j]);
                    }
                }
            }
            var payload = new byte[input.Length * 4];
            WireCodec.Encode(input, header.Dtype, payload);
            return Task.FromResult(Task.FromResult(new TensorFrame<ExpertReply>(reply, payload)));
        }

        public void Abandon(ulong requestId) => Abandoned++;
    }

    private sealed class FakeSource(DistributionOptions options, FakeWorker[] workers) : IWorkerConnectionSource
    {
        public ModelDescriptor Model => GrpcExpertDispatcherTests.Model;
        public DistributionOptions Options => options;

        public Task<IWorkerConnection> ConnectAsync(WorkerEndpoint worker, CancellationToken cancellationToken)
            => Task.FromResult<IWorkerConnection>(workers.First(w => w.Worker.Endpoint == worker.Endpoint));
    }

    private sealed class FakePlacement(ExpertPlacementTable table) : IPlacementSource
    {
        public ExpertPlacementTable Table { get; set; } = table;
        public ExpertPlacementTable? Newer { get; set; }
        public ExpertPlacementTable? Recovered { get; set; }
        public bool CanRecoverValue { get; set; } = true;
        public List<string> Reported { get; } = [];
        public List<string> RecoveredWorkers { get; } = [];
        public int WaitedForNewer { get; private set; }

        public ExpertPlacementTable GetServingTable() => Table;

        public bool CanRecover => CanRecoverValue;

        public ValueTask<PlacementRecovery> RecoverAsync(IReadOnlyCollection<string> unreachableWorkers, ulong failedVersion, string reason, CancellationToken cancellationToken)
        {
            RecoveredWorkers.AddRange(unreachableWorkers);
            Table = Recovered ?? throw new InvalidOperationException("no recovery table set");
            return ValueTask.FromResult(new PlacementRecovery(Table, []));
        }

        public void ReportUnreachable(string workerId, string reason) => Reported.Add(workerId);

        public ValueTask<ExpertPlacementTable> WaitForNewerAsync(ulong version, TimeSpan timeout, CancellationToken cancellationToken)
        {
            WaitedForNewer++;
            Table = Newer ?? Table;
            return ValueTask.FromResult(Table);
        }
    }
}
