using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Hosting;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Coordinator.Tests.Serving.Api;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Tests.Hosting;

/// <summary>The composition root: options registered with the values the command built, validated when the host starts.</summary>
[Trait("Category", "Unit")]
public sealed class CoordinatorServicesTests
{
    [Fact]
    public void ValidatedOptions_CarryTheBuiltValues_CollectionsIncluded()
    {
        var local = new LocalClusterOptions { Workers = 3, ModelDirectory = "m" };
        local.WorkerSettings["cpu-precision"] = "bf16";
        var distribution = new DistributionOptions { WireDType = Protocol.Grpc.WireDType.Fp32, Fp8Activations = true };
        var services = new ServiceCollection();
        services.AddValidatedOptions(local, (_, _) => ValidateOptionsResult.Success);
        services.AddValidatedOptions(distribution, (_, _) => ValidateOptionsResult.Success);
        using var provider = services.BuildServiceProvider();
        var bound = provider.GetRequiredService<IOptions<LocalClusterOptions>>().Value;
        Assert.Equal((3, "m", "bf16"), (bound.Workers, bound.ModelDirectory, bound.WorkerSettings["cpu-precision"]));
        var d = provider.GetRequiredService<IOptions<DistributionOptions>>().Value;
        Assert.Equal(Protocol.Grpc.WireDType.Fp32, d.WireDType);
        Assert.Equal("fp8-per-token", d.ExpertActivations);
    }

    [Fact]
    public async Task AnInvalidSchedulerOption_StopsTheHostAtStart_NamingIt()
    {
        var serve = new ServeOptions { ModelDirectory = TestPaths.Fixture("tiny-maverick"), Port = 0 };
        var scheduling = new SchedulerOptions { MaxBatchTokens = 0 };
        await using var app = ServeHost.Build(serve, ApiTestServer.Tokenizer, _ => new FakeGenerationScheduler(), l => l.SetMinimumLevel(LogLevel.Warning),
            scheduling: scheduling);
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => app.StartAsync());
        Assert.Contains("MaxBatchTokens", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ValidSchedulerOptions_StartTheHost()
    {
        var serve = new ServeOptions { ModelDirectory = TestPaths.Fixture("tiny-maverick"), Port = 0 };
        await using var app = ServeHost.Build(serve, ApiTestServer.Tokenizer, _ => new FakeGenerationScheduler(), l => l.SetMinimumLevel(LogLevel.Warning),
            scheduling: new SchedulerOptions());
        await app.StartAsync();
        Assert.Equal(new SchedulerOptions().MaxBatchTokens, app.Services.GetRequiredService<IOptions<SchedulerOptions>>().Value.MaxBatchTokens);
        await app.StopAsync();
    }
}
