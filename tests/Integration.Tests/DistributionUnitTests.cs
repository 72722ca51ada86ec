using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grains;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Integration.Tests;

/// <summary>The coordinator-side distribution pieces that need no process.</summary>
[Trait("Category", "Unit")]
public sealed class DistributionUnitTests
{
    private static readonly ModelDescriptor Model = new("fp", 8, 4, 4, 4, [1, 3]);

    [Fact]
    public void ParseWorkers_AcceptsHostPortUrlAndUnix_RejectsTheRest()
    {
        var list = DistributedExperts.ParseWorkers("127.0.0.1:5000, http://localhost:6000,unix:/tmp/w.sock,https://10.0.0.2:50051");
        Assert.Equal(["http://127.0.0.1:5000", "http://localhost:6000", "unix:/tmp/w.sock", "https://10.0.0.2:50051"], list.Select(w => w.Endpoint));
        Assert.Throws<FormatException>(() => DistributedExperts.ParseWorkers(""));
        Assert.Throws<FormatException>(() => DistributedExperts.ParseWorkers("127.0.0.1"));
        Assert.Throws<FormatException>(() => DistributedExperts.ParseWorkers("ftp://h:1"));
        Assert.Throws<FormatException>(() => DistributedExperts.ParseWorkers("h:1/path"));
    }

    [Fact]
    public void Options_DefaultsAndValidation()
    {
        var o = new DistributionOptions();
        Assert.Equal((WireDType.Bf16, TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(10), true), (o.WireDType, o.DispatchTimeout, o.ConnectTimeout, o.PreferSharedMemory));
        Assert.Equal(TestCredential.Token, o.ClusterToken);
        Assert.Empty(o.Validate());
        Assert.Contains(new DistributionOptions { WireDType = WireDType.Unspecified }.Validate(), e => e.Contains("WireDType"));
        Assert.Contains(new DistributionOptions { DispatchTimeout = TimeSpan.Zero }.Validate(), e => e.Contains("DispatchTimeout"));
        Assert.Equal((true, TimeSpan.Zero), (o.RingDoorbell, o.DoorbellSpin));
        Assert.Contains(new DistributionOptions { DoorbellSpin = TimeSpan.FromMilliseconds(11) }.Validate(), e => e.Contains("DoorbellSpin"));
        Assert.Contains(new DistributionOptions { DoorbellSpin = TimeSpan.FromTicks(-1) }.Validate(), e => e.Contains("DoorbellSpin"));
        Assert.Equal(WireDType.Fp32, DistributionOptions.ParseWire(" FP32 "));
        Assert.Throws<FormatException>(() => DistributionOptions.ParseWire("fp16"));
        Assert.NotEmpty(new LocalClusterOptions { Workers = 0 }.Validate());
        var weak = new DistributionOptions { ClusterToken = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" }.Validate();
        Assert.Contains(weak, e => e.Contains("Distribution:ClusterToken", StringComparison.Ordinal) && !e.Contains("aaaaaaaa", StringComparison.Ordinal));
    }

    [Fact]
    public void LocalCluster_GivesItsWorkersTheCredential_GeneratingOneWhenNoneIsSet()
    {
        string Token(DistributionOptions d)
        {
            var environment = new Dictionary<string, string>();
            LocalWorkerCluster.AddClusterToken(environment, d);
            return environment[ClusterToken.EnvironmentVariable];
        }
        Assert.Equal(TestCredential.Token, Token(new DistributionOptions()));
        var none = new DistributionOptions { ClusterToken = null };
        string generated = Token(none);
        Assert.Equal(generated, none.ClusterToken);
        Assert.Empty(ClusterToken.Validate(generated, "generated"));
        Assert.NotEqual(generated, Token(new DistributionOptions { ClusterToken = null }));
    }

    [Fact]
    public void TableFromHandshakes_MapsOwners_AndRefusesMixedVersions()
    {
        var a = new HelloReply { PlanVersion = 3, Shards = { new ExpertShard { Layer = 1, Experts = { 0, 1 } }, new ExpertShard { Layer = 3, Experts = { 0, 1, 2, 3 } } } };
        var b = new HelloReply { PlanVersion = 3, Shards = { new ExpertShard { Layer = 1, Experts = { 2, 3, 1 } } } };
        var table = ExpertPlacementTable.FromHandshakes(Model, [(new WorkerEndpoint("a", "x"), a), (new WorkerEndpoint("b", "y"), b)]);
        Assert.True(table.CoversAllExperts);
        Assert.Equal(3ul, table.Version);
        Assert.Equal([0, 1], table.OwnersOf(1, 1).ToArray());
        Assert.Equal([1], table.OwnersOf(1, 3).ToArray());
        Assert.True(table.OwnersOf(2, 0).IsEmpty);
        b.PlanVersion = 4;
        Assert.Throws<ArgumentException>(() => ExpertPlacementTable.FromHandshakes(Model, [(new WorkerEndpoint("a", "x"), a), (new WorkerEndpoint("b", "y"), b)]));
        var partial = ExpertPlacementTable.FromHandshakes(Model, [(new WorkerEndpoint("a", "x"), a)]);
        Assert.False(partial.CoversAllExperts);
        Assert.Throws<ExpertDispatchException>(() => new StaticPlacementSource(partial).GetServingTable());
    }

    [Fact]
    public void TableFromPlan_FollowsTheReplicas()
    {
        var w = new WorkerDescriptor("a", "http://a", "", "h", 0, Model);
        var plan = new PlacementPlan(2, Model, [w, w with { WorkerId = "b", GrpcEndpoint = "http://b" }],
            [new LayerPlacement(1, [[0], [1], [0, 1], [1]]), new LayerPlacement(3, [[0], [0], [0], [1]])], 0);
        var table = ExpertPlacementTable.FromPlan(plan);
        Assert.Equal(["http://a", "http://b"], table.Workers.Select(x => x.Endpoint));
        Assert.Equal([0, 1], table.OwnersOf(1, 2).ToArray());
        Assert.True(table.CoversAllExperts);
    }

    [Fact]
    public void SharedRingAllocator_FirstFit_ReusesFreedRegions_AndRefusesWhenFull()
    {
        using var ring = SharedRing.CreateSealed(4096);
        var allocator = new SharedRingAllocator(ring);
        var a = allocator.TryRent(1000)!;
        var b = allocator.TryRent(1000)!;
        var c = allocator.TryRent(2000)!;
        Assert.Equal([0ul, 1024ul, 2048ul], new[] { a, b, c }.Select(l => l.Descriptor!.Offset));
        Assert.Null(allocator.TryRent(100));
        b.Dispose();
        var d = allocator.TryRent(900)!;
        Assert.Equal(1024ul, d.Descriptor!.Offset);
        d.Span.Fill(7);
        Assert.True(ring.TryGetSpan(1024, 900, out var span) && span[899] == 7);
        Assert.False(ring.TryGetSpan(4000, 200, out _));
        Assert.False(ring.TryGetSpan(ulong.MaxValue, 2, out _));
        foreach (var lease in new[] { a, c, d })
        {
            lease.Dispose();
        }
    }

    [Fact]
    public void RingLeases_KeepTheRingMapped_AfterItsOwnerLetGo_AndAnAbandonedRegionIsNeverReused()
    {
        var ring = SharedRing.CreateSealed(4096);
        var allocator = new SharedRingAllocator(ring);
        var kept = allocator.TryRent(1000)!;
        var abandoned = allocator.TryRent(1000)!;
        ring.Dispose();
        kept.Span.Fill(3);
        Assert.Null(allocator.TryRent(10));
        abandoned.Abandon();
        Assert.Equal(3, kept.Span[999]);
        kept.Dispose();
        Assert.False(ring.TryGetSpan(0, 1, out _));
        Assert.Throws<ObjectDisposedException>(() => kept.Span.Length);

        using var live = SharedRing.CreateSealed(4096);
        var next = new SharedRingAllocator(live);
        var stuck = next.TryRent(4000)!;
        stuck.Abandon();
        Assert.Null(next.TryRent(100));
    }
}
