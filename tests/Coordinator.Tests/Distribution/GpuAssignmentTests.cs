using System.Collections;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Hosting;
using Distributed.Hosting;
using Distributed.Kernels;

namespace Distributed.Coordinator.Tests.Distribution;

/// <summary><c>--local-workers N --gpus 0,1,...</c> (one GPU per local worker) and the coordinator's <c>--gpu</c>.</summary>
[Trait("Category", "Unit")]
public sealed class GpuAssignmentTests
{
    private static CoordinatorConfiguration Build(params string[] args)
    {
        var cli = new CliArgs(args, [.. DistributedExpertsCli.Options], [.. DistributedExpertsCli.Flags], configurationKeys: true);
        var keys = new Dictionary<string, string?>();
        DistributedExpertsCli.MapOptions(cli, keys);
        return CoordinatorConfiguration.Build(cli.ConfigurationSettings, keys, new Hashtable());
    }

    private static List<string> WorkerArguments(LocalClusterOptions options, int index)
        => LocalWorkerLauncher.Arguments(options, new ExpertClusterOptions(), index, 20001, 20002, 20003);

    private static string? GpuArgument(List<string> args)
    {
        int i = args.IndexOf("--gpu");
        return i < 0 ? null : args[i + 1];
    }

    [Fact]
    public void Gpus_BindToLocalClusterGpus_AndEachWorkerGetsItsOwnGpu()
    {
        var settings = DistributedExpertsCli.Settings(Build("--local-workers", "3", "--gpus", "2, 5,7"), "model", null)!;

        var local = settings.LocalWorkers!;
        Assert.Equal([2, 5, 7], local.Gpus);
        Assert.Equal(["2", "5", "7"], Enumerable.Range(0, 3).Select(i => GpuArgument(WorkerArguments(local, i))));
        // A worker added later by scale-up cycles through the list.
        Assert.Equal("2", GpuArgument(WorkerArguments(local, 3)));
    }

    [Fact]
    public void WithoutGpus_WorkersGetNoGpuArgument()
    {
        var settings = DistributedExpertsCli.Settings(Build("--local-workers", "2"), "model", null)!;

        Assert.Empty(settings.LocalWorkers!.Gpus);
        Assert.Null(GpuArgument(WorkerArguments(settings.LocalWorkers, 1)));
    }

    [Fact]
    public void GpusAsConfigurationKeys_AreAccepted()
    {
        var settings = DistributedExpertsCli.Settings(Build("--local-workers", "2", "--LocalCluster:Gpus:0", "3", "--LocalCluster:Gpus:1", "4"), "model", null)!;
        Assert.Equal([3, 4], settings.LocalWorkers!.Gpus);
    }

    [Theory]
    [InlineData("0,x", "--gpus must list CUDA device ordinals")]
    [InlineData("-1", "--gpus must list CUDA device ordinals")]
    [InlineData("0,,1", "--gpus must list CUDA device ordinals")]
    [InlineData("1024", "--gpus must list CUDA device ordinals")]
    [InlineData("1,1", "names a device twice")]
    public void MalformedGpus_AreUsageErrorsNamingTheOption(string value, string expected)
    {
        var e = Assert.Throws<UsageException>(() => Build("--local-workers", "2", "--gpus", value));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GpusNotOnePerWorker_IsAUsageError()
    {
        var e = Assert.Throws<UsageException>(() => DistributedExpertsCli.Settings(Build("--local-workers", "2", "--gpus", "0,1,2"), "model", null));
        Assert.Contains("LocalCluster:Gpus (--gpus) lists 3 device(s) for 2 worker(s)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GpusWithoutLocalWorkers_IsAUsageError()
    {
        var e = Assert.Throws<UsageException>(() => DistributedExpertsCli.Settings(Build("--gpus", "0,1"), "model", null));
        Assert.Contains("needs --local-workers", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LocalClusterValidate_NamesDuplicateAndOutOfRangeGpus()
    {
        var errors = new LocalClusterOptions { Workers = 2, ModelDirectory = "m", Gpus = [1, 1] }.Validate();
        Assert.Contains(errors, e => e.Contains("names a device twice", StringComparison.Ordinal));
        errors = new LocalClusterOptions { Workers = 1, ModelDirectory = "m", Gpus = [-3] }.Validate();
        Assert.Contains(errors, e => e.Contains("within [0, 1023]", StringComparison.Ordinal));
    }

    [Fact]
    public void CoordinatorGpu_WithCpuBackend_IsAUsageErrorNamingBoth()
    {
        var e = Assert.Throws<UsageException>(() => CommandLine.CoordinatorDevice(KernelBackendKind.Cpu, gpuGiven: true, 1, [], TextWriter.Null));
        Assert.Contains("--gpu 1 (Kernels:DeviceOrdinal) needs a CUDA backend, but --backend cpu", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, CommandLine.CoordinatorDevice(KernelBackendKind.Cpu, gpuGiven: false, 0, [], TextWriter.Null));
    }

    [Fact]
    public async Task Infer_GpuWithCpuBackend_ExitsWithUsageError()
    {
        var stderr = new StringWriter();
        int code = await CommandLine.RunAsync(["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "1,2", "--backend", "cpu", "--gpu", "0"],
            TextWriter.Null, stderr);
        Assert.Equal(2, code);
        Assert.Contains("--gpu 0 (Kernels:DeviceOrdinal) needs a CUDA backend", stderr.ToString(), StringComparison.Ordinal);
    }
}
