using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Distribution;
using Distributed.Checkpoint;
using Distributed.Hosting;
using Distributed.Protocol.Contracts;
using Grpc.Core;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Cluster;

/// <summary>
/// Mutual TLS on every link of the cluster: the Orleans silo and gateway ports refuse a client without the cluster's
/// certificate, the data plane of a TLS worker refuses a coordinator without one (or with another cluster's), a full
/// cluster on operator certificates computes exactly what the in-process run does, and a listener off loopback
/// without TLS is refused unless <c>--insecure</c> says so.
/// </summary>
[Trait("Category", "Integration")]
public sealed class ClusterTlsTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("cluster-tls-").FullName;

    [Fact]
    public async Task LocalCluster_GatewaysRefuseClientsWithoutTheClusterCertificate()
    {
        var log = new TestLog { Output = output };
        using var loggerFactory = log.CreateLoggerFactory();
        var options = new LocalClusterOptions { Workers = 1, ModelDirectory = TestPaths.Fixture("tiny-maverick"), StartTimeout = TimeSpan.FromMinutes(2) };
        await using var cluster = await LocalWorkerCluster.StartAsync(options, new DistributionOptions(), log.Write, loggerFactory, CancellationToken.None);
        Assert.NotNull(cluster.Credentials);

        var client = cluster.ClientOptions;
        client.ConnectTimeout = TimeSpan.FromSeconds(8);
        await Assert.ThrowsAsync<TimeoutException>(() => ClusterPlacementFollower.StartAsync(client, loggerFactory));
        using var foreign = ClusterCredentials.Load(ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "foreign"), TimeSpan.FromDays(1)));
        await Assert.ThrowsAsync<TimeoutException>(() => ClusterPlacementFollower.StartAsync(client, loggerFactory, tls: foreign));

        client.ConnectTimeout = TimeSpan.FromSeconds(60);
        await using var member = await ClusterPlacementFollower.StartAsync(client, loggerFactory, tls: cluster.Credentials);
        Assert.True((await member.WaitForServingAsync(1, TimeSpan.FromSeconds(30), CancellationToken.None)).CoversAllExperts);
    }

    [Fact]
    public async Task OperatorCertificates_TlsDataPlaneAndClusterLinks_InferPrintsTheInProcessJson()
    {
        var tls = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "pki"), TimeSpan.FromDays(1));
        string[] common = ["infer", "--model", TestPaths.Fixture("tiny-maverick"), "--prompt-ids", "500,17,300,42", "--max-new-tokens", "6", "--json", "--threads", "1"];
        string inProcess = await RunAsync(common);
        var stderr = new StringWriter();
        string distributed = await RunAsync([.. common, "--local-workers", "2", "--wire", "fp32", "--tls-cert", tls.CertificatePath!, "--tls-key", tls.KeyPath!, "--tls-ca", tls.CaPath!], stderr);
        Assert.Equal(inProcess, distributed);
        // The workers serve their data plane over TLS (the operator's certificates enable it for every link).
        Assert.Contains("worker-0 ready at https://127.0.0.1:", stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task TlsDataPlane_RefusesACoordinatorWithoutOrWithAForeignCertificate()
    {
        var tls = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "pki"), TimeSpan.FromDays(1));
        var log = new TestLog { Output = output };
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "1:0-127,3:0-127,5:0-127", "--threads", "1", "--worker-id", "tls",
             "--tls-cert", tls.CertificatePath!, "--tls-key", tls.KeyPath!, "--tls-ca", tls.CaPath!], "tls-worker", log.Write);
        string address = await worker.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        Assert.StartsWith("https://", address, StringComparison.Ordinal);
        ModelDescriptor model;
        using (var checkpoint = CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        using var loggerFactory = log.CreateLoggerFactory();
        var logger = loggerFactory.CreateLogger("test");
        var options = new DistributionOptions { ConnectTimeout = TimeSpan.FromSeconds(10) };
        var endpoint = new WorkerEndpoint("tls", address);

        var none = await Assert.ThrowsAsync<ExpertDispatchException>(() => WorkerConnection.ConnectAsync(endpoint, model, options, logger, CancellationToken.None));
        Assert.Equal(StatusCode.FailedPrecondition, none.Status);
        Assert.Contains("no cluster certificate", none.Message, StringComparison.Ordinal);

        using var foreign = ClusterCredentials.Load(ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "foreign"), TimeSpan.FromDays(1)))!;
        var refused = await Assert.ThrowsAsync<ExpertDispatchException>(() => WorkerConnection.ConnectAsync(endpoint, model, options, logger, CancellationToken.None, foreign));
        output.WriteLine(refused.Message);
        Assert.Equal(StatusCode.Unauthenticated, refused.Status);
        Assert.Contains("certificate", refused.Message, StringComparison.Ordinal);

        using var member = ClusterCredentials.Load(tls)!;
        await using var connection = await WorkerConnection.ConnectAsync(endpoint, model, options, logger, CancellationToken.None, member);
        Assert.Equal("tls", connection.Hello.WorkerId);
        Assert.False(worker.HasExited);
    }

    [Fact]
    public async Task NonLoopbackListener_WithoutTls_IsRefusedUnlessInsecure()
    {
        var log = new TestLog { Output = output };
        string[] args = ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", "1:0-127,3:0-127,5:0-127", "--threads", "1", "--grpc-host", "10.255.255.1", "--ops-port", "-1"];
        await using (var refused = WorkerProcess.Start(WorkerProcess.LocateWorker(), args, "cleartext", log.Write))
        {
            await refused.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(2, refused.ExitCode);
            Assert.Contains("without TLS", refused.DescribeExit(), StringComparison.Ordinal);
        }
        // With --insecure the configuration is accepted; this address is not on the machine, so binding it fails (4).
        await using var insecure = WorkerProcess.Start(WorkerProcess.LocateWorker(), [.. args, "--insecure"], "insecure", log.Write);
        await insecure.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(4, insecure.ExitCode);
    }

    private async Task<string> RunAsync(string[] args, StringWriter? stderr = null)
    {
        var stdout = new StringWriter();
        stderr ??= new StringWriter();
        int rc = await CommandLine.RunAsync(args, stdout, stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, rc);
        return stdout.ToString();
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
