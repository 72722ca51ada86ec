using Distributed.ExpertWorker.Weights;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;
using Distributed.Kernels.Experts;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Microsoft.Extensions.Logging.Abstractions;

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
}
