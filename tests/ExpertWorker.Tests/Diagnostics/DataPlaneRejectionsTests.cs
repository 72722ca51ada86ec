using Distributed.ExpertWorker.Diagnostics;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace Distributed.ExpertWorker.Tests.Diagnostics;

/// <summary>A flood of refusals writes one line per kind per interval, each carrying how many were not logged.</summary>
[Trait("Category", "Unit")]
public sealed class DataPlaneRejectionsTests
{
    private sealed class ListLogger : ILogger<DataPlaneRejections>
    {
        public List<(LogLevel Level, string Message, Exception? Exception)> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            => Lines.Add((logLevel, formatter(state, exception), exception));
    }

    [Fact]
    public void Flood_OneLinePerKindPerInterval_WithTheSuppressedCount_NeverAnException()
    {
        var logger = new ListLogger();
        var time = new FakeTimeProvider();
        var rejections = new DataPlaneRejections(logger, time);
        for (int i = 0; i < 1000; i++)
        {
            rejections.Report(RejectionKind.MalformedFrame, StatusCode.InvalidArgument, $"frame {i}");
            rejections.Report(RejectionKind.Unauthenticated, StatusCode.Unauthenticated, "no credential");
        }
        Assert.Equal(2, logger.Lines.Count);
        Assert.Contains("frame 0", logger.Lines[0].Message);
        Assert.Contains("(0 more", logger.Lines[0].Message);
        time.Advance(DataPlaneRejections.Interval - TimeSpan.FromMilliseconds(1));
        rejections.Report(RejectionKind.MalformedFrame, StatusCode.InvalidArgument, "still suppressed");
        Assert.Equal(2, logger.Lines.Count);
        time.Advance(TimeSpan.FromMilliseconds(1));
        rejections.Report(RejectionKind.MalformedFrame, StatusCode.ResourceExhausted, "next window");
        Assert.Equal(3, logger.Lines.Count);
        Assert.Contains("next window", logger.Lines[2].Message);
        Assert.Contains("(1000 more", logger.Lines[2].Message);
        Assert.All(logger.Lines, l => Assert.Null(l.Exception));
        Assert.All(logger.Lines, l => Assert.Equal(LogLevel.Warning, l.Level));
        Assert.Equal(2002, rejections.Total);
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("line\nbreak\u0007", "line?break?")]
    [InlineData("", "")]
    public void Printable_KeepsPeerTextToOneBoundedAsciiLine(string text, string expected)
    {
        Assert.Equal(expected, DataPlaneRejections.Printable(text));
        Assert.Equal(64 + 1, DataPlaneRejections.Printable(new string('x', 5000)).Length);
    }
}
