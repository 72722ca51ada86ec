using Distributed.ExpertWorker.Weights;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Distributed.ExpertWorker.Tests.Weights;

public sealed class ShardStoreTests : IDisposable
{
    private static readonly ModelDescriptor Model = new("fp", HiddenSize: 16, IntermediateSize: 8, NumLayers: 4, NumExperts: 8, MoeLayers: [1, 3]);
    private readonly CountingLoader _loader = new();

    private sealed class CountingLoader : IExpertLoader
    {
        public List<ExpertKey> Loads { get; } = [];
        public CpuKernelBackend Cpu { get; } = new(1);
        public IKernelBackend Backend => Cpu;
        public bool Fail { get; set; }

        public ExpertWeights Load(int layer, int expert)
        {
            if (Fail)
            {
                throw new InvalidOperationException("disk on fire");
            }
            lock (Loads)
            {
                Loads.Add(new ExpertKey(layer, expert));
            }
            var gu = new ushort[Model.HiddenSize * 2 * Model.IntermediateSize];
            var d = new ushort[Model.IntermediateSize * Model.HiddenSize];
            gu.AsSpan().Fill(0x3C00);
            d.AsSpan().Fill(0x3C00);
            return new ExpertWeights(layer, expert,
                Cpu.CreateWeight(gu, Model.HiddenSize, 2 * Model.IntermediateSize, WeightLayout.InOut),
                Cpu.CreateWeight(d, Model.IntermediateSize, Model.HiddenSize, WeightLayout.InOut));
        }
    }

    private ShardStore NewStore() => new("w", Model, _loader, maxRowsPerDispatch: 64, warmUp: true, NullLogger<ShardStore>.Instance);

    [Fact]
    [Trait("Category", "Unit")]
    public async Task Apply_LoadsOnlyAssignedExperts_AndKeepsThemAcrossPlans()
    {
        using var store = NewStore();
        var first = ShardManifest.Parse("1:0-2,3:7", Model);
        var status = await store.ApplyAsync(4, first, CancellationToken.None);
        Assert.Equal(ShardState.Serving, status.State);
        Assert.Equal(4, status.Experts);
        Assert.Equal(4ul, store.PlanVersion);
        Assert.Equal(first.Experts.OrderBy(k => k.ToString()), _loader.Loads.OrderBy(k => k.ToString()));
        Assert.True(store.Holds(1, 2));
        Assert.False(store.Holds(1, 3));

        _loader.Loads.Clear();
        await store.ApplyAsync(5, ShardManifest.Parse("1:2-3", Model), CancellationToken.None);
        Assert.Equal([new ExpertKey(1, 3)], _loader.Loads);
        Assert.False(store.Holds(3, 7));
        Assert.Equal(5ul, store.PlanVersion);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public async Task DroppedExperts_StayUsableUntilTheLastLeaseEnds()
    {
        using var store = NewStore();
        await store.ApplyAsync(1, ShardManifest.Parse("1:0", Model), CancellationToken.None);
        var lease = store.Acquire();
        var weights = lease.Weights[new ExpertKey(1, 0)];
        await store.ApplyAsync(2, ShardManifest.Empty, CancellationToken.None);
        Assert.Equal(1ul, lease.Version);
        var y = new float[Model.HiddenSize];
        _loader.Cpu.SwiGluFfn(new float[Model.HiddenSize], 1, weights.GateUp, weights.Down, y);
        lease.Dispose();
        Assert.Equal(ShardState.Empty, store.Status.State);
        Assert.Equal(0, store.Acquire().Manifest.Count);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public async Task FailedLoad_LeavesThePreviousShardServing()
    {
        using var store = NewStore();
        await store.ApplyAsync(1, ShardManifest.Parse("1:0", Model), CancellationToken.None);
        _loader.Fail = true;
        await Assert.ThrowsAsync<InvalidOperationException>(() => store.ApplyAsync(2, ShardManifest.Parse("1:1", Model), CancellationToken.None));
        Assert.Equal(ShardState.Failed, store.Status.State);
        Assert.Contains("disk on fire", store.Status.Error);
        Assert.Equal(1ul, store.PlanVersion);
        Assert.True(store.Holds(1, 0));
    }

    public void Dispose() => _loader.Cpu.Dispose();

    [Fact]
    [Trait("Category", "Unit")]
    public async Task Stage_ServesBothVersions_ThenCommitRetiresThePreviousAfterTheDelay()
    {
        var time = new FakeTimeProvider();
        using var store = new ShardStore("w", Model, _loader, 64, warmUp: true, NullLogger<ShardStore>.Instance, retireDelay: TimeSpan.FromMilliseconds(200), time);
        await store.ApplyAsync(1, ShardManifest.Parse("1:0-1", Model), CancellationToken.None);
        _loader.Loads.Clear();
        var staged = await store.StageAsync(2, ShardManifest.Parse("1:1-2", Model), CancellationToken.None);
        Assert.Equal(ShardState.Staged, staged.State);
        Assert.Equal(2, staged.StagedVersion);
        Assert.Equal(1, staged.PlanVersion);
        Assert.Equal([new ExpertKey(1, 2)], _loader.Loads);
        Assert.True(store.AcceptsPlanVersion(1) && store.AcceptsPlanVersion(2));
        Assert.True(store.Holds(1, 0) && store.Holds(1, 2));

        var committed = await store.ApplyAsync(2, ShardManifest.Parse("1:1-2", Model), CancellationToken.None);
        Assert.Equal(ShardState.Serving, committed.State);
        Assert.Equal(0, committed.StagedVersion);
        Assert.Equal(2ul, store.PlanVersion);
        Assert.True(store.AcceptsPlanVersion(1), "the previous version is refused before the retire delay");
        Assert.True(store.Holds(1, 0));
        long resident = store.Status.ResidentBytes;
        time.Advance(TimeSpan.FromMilliseconds(199));
        Assert.True(store.AcceptsPlanVersion(1), "the previous version is refused 1 ms before the retire delay ends");
        Assert.False(store.PendingRetirement.IsCompleted);
        time.Advance(TimeSpan.FromMilliseconds(1));
        await store.PendingRetirement.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(store.AcceptsPlanVersion(1));
        Assert.False(store.Holds(1, 0));
        Assert.Equal(2, store.Status.Experts);
        Assert.True(store.Status.ResidentBytes < resident);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public async Task FailedStage_KeepsServingTheCommittedVersion_AndReapplyDropsAbandonedStagedExperts()
    {
        using var store = NewStore();
        await store.ApplyAsync(1, ShardManifest.Parse("1:0", Model), CancellationToken.None);
        _loader.Fail = true;
        await Assert.ThrowsAsync<InvalidOperationException>(() => store.StageAsync(2, ShardManifest.Parse("1:0-3", Model), CancellationToken.None));
        Assert.Equal(ShardState.Serving, store.Status.State);
        Assert.Contains("disk on fire", store.Status.Error);
        Assert.True(store.AcceptsPlanVersion(1));
        Assert.False(store.AcceptsPlanVersion(2));
        Assert.True(store.Holds(1, 0));
        _loader.Fail = false;

        await store.StageAsync(3, ShardManifest.Parse("1:0-3", Model), CancellationToken.None);
        Assert.True(store.Holds(1, 3) && store.AcceptsPlanVersion(3));
        await store.ApplyAsync(1, ShardManifest.Parse("1:0", Model), CancellationToken.None);
        Assert.False(store.Holds(1, 3));
        Assert.False(store.AcceptsPlanVersion(3));
        Assert.Equal(1, store.Status.Experts);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.StageAsync(1, ShardManifest.Empty, CancellationToken.None));
    }
}
