using System.Diagnostics;
using System.Globalization;
using Distributed.Coordinator.Distribution;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Cluster;

/// <summary>A worker asked to stop (SIGTERM) is gone within 10 s even when its membership store has vanished.</summary>
[Trait("Category", "Integration")]
public sealed class WorkerShutdownTests(ITestOutputHelper output)
{
    [RedisFact]
    public async Task Sigterm_WithTheMembershipStoreGone_ExitsWithin10s()
    {
        ToolFactAttribute.Require(RedisServer.Missing);
        var log = new TestLog { Output = output };
        var redis = await RedisServer.StartAsync(log.Write);
        int[] ports = WorkerProcess.FreePorts(2);
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--worker-id", "w", "--threads", "1", "--clustering", "Redis", "--redis", redis.Connection,
             "--cluster-id", $"stop-{Guid.NewGuid():N}", "--advertised-address", "127.0.0.1",
             "--silo-port", ports[0].ToString(CultureInfo.InvariantCulture), "--gateway-port", ports[1].ToString(CultureInfo.InvariantCulture)],
            "w", log.Write);
        await worker.WaitReadyAsync(TimeSpan.FromMinutes(2), CancellationToken.None);
        await redis.DisposeAsync();
        var sw = Stopwatch.StartNew();
        worker.Terminate();
        await worker.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(15));
        output.WriteLine($"worker exited {sw.ElapsedMilliseconds} ms after SIGTERM: {worker.DescribeExit()}");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"the worker took {sw.Elapsed} to stop");
    }
}
