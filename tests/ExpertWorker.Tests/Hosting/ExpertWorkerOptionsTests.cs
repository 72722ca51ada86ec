using Distributed.Hosting;
using Microsoft.Extensions.Configuration;
using Distributed.ExpertWorker.Hosting;
using Distributed.ExpertWorker.Placement;

namespace Distributed.ExpertWorker.Tests.Hosting;

public class ExpertWorkerOptionsTests
{
    [Fact]
    [Trait("Category", "Unit")]
    public void DefaultsShouldNotChange()
    {
        var o = new ExpertWorkerOptions();
        Assert.Equal(("", "", "127.0.0.1", 0, 4096, 0, 0L, 2, true, 0L), (o.ModelDirectory, o.WorkerId, o.GrpcHost, o.GrpcPort, o.MaxRowsPerDispatch,
            o.KernelThreads, o.MemoryCapacityBytes, o.MaxConcurrentRequestsPerStream, o.WarmUp, o.StaticPlanVersion));
        Assert.Null(o.StaticExperts);
        Assert.Equal((false, true, 1L << 30, 256, TimeSpan.FromSeconds(30)),
            (o.AllowUnauthenticated, o.SharedMemory, o.MaxSharedRingBytes, o.MaxSessions, o.SessionIdleGrace));
        Assert.Null(o.SharedMemoryDirectory);
        Assert.Equal(4096 * 5120 * 4 + 65536, o.MaxMessageBytes(5120));
        var c = new ExpertClusterOptions();
        Assert.Equal((ClusteringMode.Localhost, "distributed-moe", "dev", 11111, 30000, 0, "127.0.0.1"),
            (c.Clustering, c.ServiceId, c.ClusterId, c.SiloPort, c.GatewayPort, c.PrimarySiloPort, c.AdvertisedAddress));
        Assert.Equal(("Npgsql", true), (c.AdoNetInvariant, c.AdoNetApplySchema));
        var p = new PlacementOptions();
        Assert.Equal((1, TimeSpan.FromMilliseconds(300), TimeSpan.FromMilliseconds(100)), (p.ReplicationFactor, p.SettleDelay, p.CheckInterval));
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(-1, 4096, "GrpcPort")]
    [InlineData(0, 0, "MaxRowsPerDispatch")]
    public void InvalidWorkerOptions_AreNamed(int port, int maxRows, string field)
    {
        var o = new ExpertWorkerOptions { ModelDirectory = "/m", GrpcPort = port, MaxRowsPerDispatch = maxRows };
        var result = new ExpertWorkerOptionsValidator().Validate(null, o);
        Assert.True(result.Failed);
        Assert.Contains(field, result.FailureMessage);
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData("redisMissing", "RedisConnectionString")]
    [InlineData("samePorts", "must differ")]
    [InlineData("badPort", "SiloPort")]
    [InlineData("badAddress", "AdvertisedAddress")]
    [InlineData("adoMissing", "AdoNetConnectionString")]
    [InlineData("adoNotPostgres", "AdoNetInvariant 'Microsoft.Data.SqlClient' is not supported")]
    public void InvalidClusterOptions_AreNamed(string scenario, string expected)
    {
        var c = new ExpertClusterOptions();
        switch (scenario)
        {
            case "redisMissing": c.Clustering = ClusteringMode.Redis; break;
            case "samePorts": c.GatewayPort = c.SiloPort; break;
            case "badPort": c.SiloPort = 70000; break;
            case "badAddress": c.AdvertisedAddress = "not-an-ip"; break;
            case "adoMissing": c.Clustering = ClusteringMode.AdoNet; break;
            case "adoNotPostgres":
                c.Clustering = ClusteringMode.AdoNet;
                c.AdoNetConnectionString = "Server=db";
                c.AdoNetInvariant = "Microsoft.Data.SqlClient";
                break;
        }
        Assert.Contains(c.Validate(isSilo: true), e => e.Contains(expected, StringComparison.Ordinal));
        Assert.Empty(new ExpertClusterOptions().Validate(isSilo: true));
        Assert.Empty(new ExpertClusterOptions().Validate(isSilo: false));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void InvalidPlacementOptions_AreNamed()
    {
        Assert.Contains(new PlacementOptions { ReplicationFactor = 0 }.Validate(), e => e.Contains("ReplicationFactor"));
        Assert.Contains(new PlacementOptions { CheckInterval = TimeSpan.Zero }.Validate(), e => e.Contains("CheckInterval"));
    }
}

public class WorkerConfigurationBindingTests
{
    [Theory]
    [Trait("Category", "Unit")]
    [InlineData("ExpertWorker:KernelCpuPrecision", "bogus")]
    [InlineData("ExpertWorker:KernelBackend", "gpu9")]
    [InlineData("Cluster:SiloPort", "eleven")]
    public async Task UnconvertibleValue_IsAnOptionsValidationErrorNamingTheKey(string key, string value)
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ExpertWorker:ModelDirectory"] = "/nonexistent", [key] = value })
            .Build();
        var e = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => WorkerHost.StartAsync(configuration));
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
        Assert.Contains(value, e.Message, StringComparison.Ordinal);
    }
}
