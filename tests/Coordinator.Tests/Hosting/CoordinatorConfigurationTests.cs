using System.Collections;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Hosting;
using Distributed.Hosting;

namespace Distributed.Coordinator.Tests.Hosting;

public sealed class CoordinatorConfigurationTests
{
    private static CoordinatorConfiguration Build(IDictionary? environment, string[] args, out CliArgs cli)
    {
        cli = new CliArgs(args, [.. DistributedExpertsCli.Options], [.. DistributedExpertsCli.Flags], configurationKeys: true);
        var keys = new Dictionary<string, string?>();
        DistributedExpertsCli.MapOptions(cli, keys);
        return CoordinatorConfiguration.Build(cli.ConfigurationSettings, keys, environment ?? new Hashtable());
    }

    [Fact]
    public void NoClusterSettings_ExpertsInProcess()
        => Assert.Null(DistributedExpertsCli.Settings(Build(null, [], out _), "model", null));

    [Fact]
    public void EnvironmentAlone_JoinsTheRedisCluster()
    {
        var env = new Hashtable
        {
            ["DISTRIBUTED_Cluster__Clustering"] = "Redis",
            ["DISTRIBUTED_Cluster__RedisConnectionString"] = "redis:6379",
            ["DISTRIBUTED_Cluster__ClusterId"] = "prod",
            ["DISTRIBUTED_Distribution__WireDType"] = "Fp32",
            ["OTHER"] = "ignored",
        };
        var settings = DistributedExpertsCli.Settings(Build(env, [], out _), "model", null)!;
        Assert.Equal(ExpertsMode.Cluster, settings.Mode);
        Assert.Equal(ClusteringMode.Redis, settings.Cluster.Clustering);
        Assert.Equal("redis:6379", settings.Cluster.RedisConnectionString);
        Assert.Equal("prod", settings.Cluster.ClusterId);
        Assert.Equal(Protocol.Grpc.WireDType.Fp32, settings.Distribution.WireDType);
        Assert.Null(settings.LocalWorkers);
    }

    [Fact]
    public void CommandLine_WinsOverEnvironment_AndSectionKeysAreAccepted()
    {
        var env = new Hashtable { ["DISTRIBUTED_Cluster__ClusterId"] = "from-env", ["DISTRIBUTED_Cluster__Clustering"] = "Redis", ["DISTRIBUTED_Cluster__RedisConnectionString"] = "r:1" };
        var settings = DistributedExpertsCli.Settings(Build(env, ["--cluster-id", "from-cli", "--Distribution:SplitRows", "64", "--gateways", "30001,30002"], out _), "model", null)!;
        Assert.Equal("from-cli", settings.Cluster.ClusterId);
        Assert.Equal(64, settings.Distribution.SplitRows);
        Assert.Equal([30001, 30002], settings.Cluster.GatewayPorts);
    }

    [Theory]
    [InlineData(null, false, int.MaxValue)]
    [InlineData("8", true, 8)]
    [InlineData("off", false, int.MaxValue)]
    [InlineData("OFF", false, int.MaxValue)]
    [InlineData("32", true, 32)]
    public void MicroBatch_MapsToTheModelsSplitRule(string? value, bool enabled, int minTokens)
    {
        string[] args = value is null ? ["--local-workers", "2"] : ["--local-workers", "2", "--micro-batch", value];
        var settings = DistributedExpertsCli.Settings(Build(null, args, out _), "dir", null)!;
        var rule = settings.Distribution.MicroBatching();
        Assert.Equal(enabled, rule.Enabled);
        Assert.Equal(minTokens, rule.MinTokens);
    }

    [Fact]
    public void ImageSettings_BindFromEnvironmentAndSectionKeys()
    {
        var env = new Hashtable { ["DISTRIBUTED_Images__MaxImagesPerRequest"] = "3", ["DISTRIBUTED_Images__UrlAllowList__0"] = "img.example" };
        var images = Build(env, ["--Images:FetchTimeout", "00:00:05"], out _).Bind<Coordinator.Serving.Images.ImageOptions>(Coordinator.Serving.Images.ImageOptions.SectionName);
        Assert.Equal(3, images.MaxImagesPerRequest);
        Assert.Equal(["img.example"], images.UrlAllowList);
        Assert.Equal(TimeSpan.FromSeconds(5), images.FetchTimeout);
        Assert.Throws<ArgumentException>(() => Build(null, ["--Images:NoSuchKey", "1"], out _));
    }

    [Fact]
    public void LocalWorkers_StartsThemWithTheCoordinatorsPrecision()
    {
        var settings = DistributedExpertsCli.Settings(Build(null, ["--local-workers", "3"], out _), "dir", "bf16")!;
        Assert.Equal(ExpertsMode.Cluster, settings.Mode);
        Assert.Equal(3, settings.LocalWorkers!.Workers);
        Assert.Equal("dir", settings.LocalWorkers.ModelDirectory);
        Assert.Equal("bf16", settings.LocalWorkers.WorkerSettings["cpu-precision"]);
    }

    [Fact]
    public void ExpertLoadOptions_ReachLocalWorkers_AndAWireAloneKeepsExpertsInProcess()
    {
        var settings = DistributedExpertsCli.Settings(Build(null, ["--local-workers", "2", "--quantize", "fp8", "--fp8-activations"], out _), "dir", null)!;
        Assert.Equal(new Checkpoint.ExpertLoadOptions(Checkpoint.ExpertQuantization.Fp8, Kernels.Fp8ActivationMode.PerTokenFp8), settings.LocalWorkers!.Experts);
        Assert.Equal("fp8-per-token", settings.Distribution.ExpertActivations);

        // --wire without workers: experts stay in process (their rows rounded as that wire would, see InProcessWire).
        Assert.Null(DistributedExpertsCli.Settings(Build(null, ["--wire", "fp8"], out _), "dir", null));
    }

    [Theory]
    [InlineData("mutually exclusive", "--local-workers", "2", "--workers", "127.0.0.1:5000")]
    [InlineData("mutually exclusive", "--workers", "127.0.0.1:5000", "--clustering", "Redis", "--redis", "r:1")]
    [InlineData("needs --local-workers, --workers or --clustering", "--redis", "r:1")]
    [InlineData("--quantize 'int4' must be none or fp8", "--quantize", "int4")]
    [InlineData("Distribution:MicroBatchMinTokens (--micro-batch) needs --local-workers", "--micro-batch", "16")]
    [InlineData("--micro-batch '1' must be off or a token count", "--local-workers", "2", "--micro-batch", "1")]
    [InlineData("--micro-batch 'some' must be off or a token count", "--local-workers", "2", "--micro-batch", "some")]
    [InlineData("Distribution:MicroBatchMinTokens 1 must be 0 (off)", "--local-workers", "2", "--Distribution:MicroBatchMinTokens", "1")]
    [InlineData("needs --clustering Redis", "--clustering", "Localhost", "--redis", "r:1")]
    [InlineData("Cluster:RedisConnectionString is required", "--clustering", "Redis")]
    [InlineData("--clustering must be one of", "--clustering", "Zookeeper")]
    [InlineData("--gateways must list TCP ports", "--clustering", "Localhost", "--gateways", "30000,x")]
    [InlineData("unknown option --Clusterz:Id", "--Clusterz:Id", "x")]
    [InlineData("has no setting 'Nope'", "--Cluster:Nope", "x")]
    [InlineData("--local-workers must be an integer in [1, 64]", "--local-workers", "0")]
    public void BadSettings_AreUsageErrorsNamingTheOption(string reason, params string[] args)
    {
        var ex = Assert.ThrowsAny<Exception>(() => DistributedExpertsCli.Settings(Build(null, args, out _), "model", null));
        Assert.True(ex is UsageException or ArgumentException, ex.ToString());
        Assert.Contains(reason, ex.Message, StringComparison.Ordinal);
    }
}
