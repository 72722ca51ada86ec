using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Tests.Admin;

public sealed class ExpertLoadStatisticsTests
{
    private static readonly ModelDescriptor Model = new("fp", 8, 4, 4, 6, [1, 3]);

    [Fact]
    [Trait("Category", "Unit")]
    public void RoutedRows_CountInTotalAndInTheRecentWindow_WhichForgets()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        var stats = new ExpertLoadStatistics(Model, TimeSpan.FromMilliseconds(300), buckets: 3, timeProvider: clock);
        stats.RecordRouting(1, [0, 4], [5, 2]);
        stats.RecordRouting(1, [4], [1]);
        stats.RecordRouting(2, [0], [9]);
        var (recent, total) = stats.Layer(1);
        Assert.Equal([5L, 0, 0, 0, 3, 0], total);
        Assert.Equal(total, recent);
        Assert.Equal(new long[6], stats.Layer(3).Total);
        Assert.Throws<ArgumentOutOfRangeException>(() => stats.Layer(2));
        clock.Advance(TimeSpan.FromMilliseconds(200));
        Assert.Equal(total, stats.Layer(1).Recent);
        clock.Advance(TimeSpan.FromMilliseconds(500));
        (recent, total) = stats.Layer(1);
        Assert.Equal(new long[6], recent);
        Assert.Equal([5L, 0, 0, 0, 3, 0], total);
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void WorkerCounters_TrackOutstandingRowsLatencyAndFailures()
    {
        var stats = new ExpertLoadStatistics(Model);
        var w = stats.Worker("w1");
        Assert.Same(w, stats.Worker("w1"));
        w.Sent(10, 400);
        w.Sent(4, 160);
        Assert.Equal(14, w.OutstandingRows);
        w.Answered(10, 400, System.Diagnostics.Stopwatch.Frequency / 100);
        w.Failed(4);
        Assert.Equal(0, w.OutstandingRows);
        Assert.Equal((1L, 10L, 560L, 400L, 1L), (w.Requests, w.Rows, w.BytesSent, w.BytesReceived, w.Failures));
        Assert.Equal(10.0, w.MeanLatencyMs, 3);
        Assert.Equal(10.0, w.MaxLatencyMs, 3);
        Assert.Equal(["w1"], stats.Workers.Select(x => x.WorkerId));
    }
}
