using System.Globalization;
using System.Net.Http.Headers;
using Distributed.Coordinator.Admin;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Checkpoint;
using Distributed.Kernels.Cpu;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Distributed.Integration.Tests.Admin;

/// <summary>
/// Three real workers whose memory fits their share of the experts plus <see cref="SlackExperts"/>, a coordinator-side
/// engine (fp32 wire) and the admin API on its own loopback listener with <see cref="Token"/>.
/// </summary>
public sealed class AdminClusterFixture : IAsyncLifetime
{
    public const string Token = "test-admin-token-0123456789";
    public const int SlackExperts = 8;

    private readonly TestLog _log = new();
    private ILoggerFactory? _loggerFactory;

    internal TestLog Log => _log;

    public LocalWorkerCluster Cluster { get; private set; } = null!;

    public WebApplication Host { get; private set; } = null!;

    public string BaseAddress { get; private set; } = "";

    public string GrpcAddress { get; private set; } = "";

    public Llama4Engine Engine { get; private set; } = null!;

    /// <summary>A continuous-batching scheduler over <see cref="Engine"/>, whose counters <c>/admin/v1/serving</c> reports.</summary>
    public Coordinator.Serving.Scheduling.ContinuousBatchScheduler Scheduler { get; private set; } = null!;

    public ModelDescriptor Model { get; private set; } = null!;

    public long CapacityExperts { get; private set; }

    /// <summary>An HTTP client with the right token (or <paramref name="token"/>, or none when null is passed explicitly).</summary>
    public HttpClient Client(string? token = Token)
    {
        var client = new HttpClient { BaseAddress = new Uri(BaseAddress), Timeout = TimeSpan.FromSeconds(60) };
        if (token is not null)
        {
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }
        return client;
    }

    public async Task InitializeAsync()
    {
        _loggerFactory = _log.CreateLoggerFactory();
        using (var checkpoint = CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            Model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        long total = (long)Model.MoeLayers.Length * Model.NumExperts;
        CapacityExperts = (total + 2) / 3 + SlackExperts;
        var options = new LocalClusterOptions { Workers = 3, ModelDirectory = TestPaths.Fixture("tiny-maverick"), StartTimeout = TimeSpan.FromSeconds(120) };
        options.WorkerSettings["Placement:SettleDelay"] = "00:00:00.5";
        options.WorkerSettings["ExpertWorker:RetireDelay"] = "00:00:00.5";
        options.WorkerSettings["ExpertWorker:MemoryCapacityBytes"] = (CapacityExperts * Model.ExpertBytes).ToString(CultureInfo.InvariantCulture);
        Cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions { WireDType = WireDType.Fp32 }, _log.Write, _loggerFactory, CancellationToken.None);
        Engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick"), new CpuKernelBackend(1), Cluster.Dispatcher);
        Scheduler = new Coordinator.Serving.Scheduling.ContinuousBatchScheduler(Engine, new Coordinator.Serving.Scheduling.SchedulerOptions());
        Host = ClusterAdminHosting.BuildHost(new ClusterAdminOptions { Token = Token, Host = "127.0.0.1", Port = 0, GrpcPort = 0 },
            _ => new ClusterAdmin(Cluster.Placement, Cluster.GrpcDispatcher, () => Scheduler.Stats),
            l => l.AddProvider(new ForwardingProvider(_loggerFactory)).SetMinimumLevel(LogLevel.Warning));
        await Host.StartAsync();
        BaseAddress = ClusterAdminHosting.BoundAddress(Host);
        GrpcAddress = ClusterAdminHosting.BoundGrpcAddress(Host)!;
    }

    public async Task DisposeAsync()
    {
        if (Host is not null)
        {
            await Host.StopAsync();
            await Host.DisposeAsync();
        }
        if (Scheduler is not null)
        {
            await Scheduler.DisposeAsync();
        }
        Engine?.Dispose();
        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
        _loggerFactory?.Dispose();
    }

    private sealed class ForwardingProvider(ILoggerFactory factory) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => factory.CreateLogger(categoryName);

        public void Dispose()
        {
        }
    }
}
