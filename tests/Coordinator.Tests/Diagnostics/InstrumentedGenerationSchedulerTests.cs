using System.Diagnostics;
using System.Diagnostics.Metrics;
using Distributed.Coordinator.Diagnostics;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Tests.Serving.Api;

namespace Distributed.Coordinator.Tests.Diagnostics;

[Trait("Category", "Unit")]
[Collection("CoordinatorDiagnostics")] // meter and activity listeners are process-wide
public sealed class InstrumentedGenerationSchedulerTests
{
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _meters = new();
        private readonly ActivityListener _spans;

        public Recorder()
        {
            _meters.InstrumentPublished = (i, l) =>
            {
                if (i.Meter.Name == CoordinatorInstruments.MeterName)
                {
                    l.EnableMeasurementEvents(i);
                }
            };
            _meters.SetMeasurementEventCallback<long>((i, v, tags, _) => Add(i.Name, v, tags));
            _meters.SetMeasurementEventCallback<double>((i, v, tags, _) => Add(i.Name, v, tags));
            _meters.Start();
            _spans = new ActivityListener
            {
                ShouldListenTo = s => s.Name == CoordinatorInstruments.ActivitySourceName,
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
                ActivityStopped = a =>
                {
                    lock (Spans)
                    {
                        Spans.Add(a);
                    }
                },
            };
            ActivitySource.AddActivityListener(_spans);
        }

        public List<(string Name, double Value, string Tags)> Measurements { get; } = [];

        public List<Activity> Spans { get; } = [];

        private void Add(string name, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var text = string.Join(",", tags.ToArray().Select(t => $"{t.Key}={t.Value}"));
            lock (Measurements)
            {
                Measurements.Add((name, value, text));
            }
        }

        public void Dispose()
        {
            _meters.Dispose();
            _spans.Dispose();
        }
    }

    private static GenerationRequest Request(string id, int maxTokens) => new(id, [1, 2, 3], maxTokens, SamplingParams.Greedy);

    [Fact]
    public async Task FinishedRequest_RecordsTtftInterTokenTokensOutcomeAndSpans()
    {
        using var recorder = new Recorder();
        using var instruments = new CoordinatorInstruments();
        var scheduler = new InstrumentedGenerationScheduler(new FakeGenerationScheduler(), instruments);
        var tokens = new List<GeneratedToken>();
        await foreach (var t in scheduler.GenerateAsync(Request("r1", 4), CancellationToken.None))
        {
            tokens.Add(t);
        }
        Assert.Equal(4, tokens.Count);
        Assert.Single(recorder.Measurements, m => m.Name == "moe.request.ttft");
        Assert.Equal(3, recorder.Measurements.Count(m => m.Name == "moe.request.inter_token"));
        Assert.Equal(4, recorder.Measurements.Where(m => m.Name == "moe.tokens.generated").Sum(m => m.Value));
        Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=length");

        var mine = recorder.Spans.Where(s => s.RootId == recorder.Spans.Single(g => g.OperationName == "generate" && (string?)g.GetTagItem("moe.request_id") == "r1").RootId).ToList();
        var generate = mine.Single(s => s.OperationName == "generate");
        Assert.Equal("Length", generate.GetTagItem("moe.outcome"));
        Assert.Single(mine, s => s.OperationName == "prefill" && s.ParentSpanId == generate.SpanId);
        Assert.Equal(3, mine.Count(s => s.OperationName == "decode_step" && s.ParentSpanId == generate.SpanId));
    }

    [Fact]
    public async Task Outcome_IsCountedWhenTheLastTokenIsHandedOut_NotWhenTheConsumerDisposes()
    {
        // The HTTP layer writes its response on seeing the finishing token and disposes the stream afterwards; a client
        // that scrapes /metrics right after its response must already find the request counted.
        using var recorder = new Recorder();
        using var instruments = new CoordinatorInstruments();
        var scheduler = new InstrumentedGenerationScheduler(new FakeGenerationScheduler(), instruments);
        var tokens = scheduler.GenerateAsync(Request("r-last", 3), CancellationToken.None).GetAsyncEnumerator();
        try
        {
            for (int i = 0; i < 3; i++)
            {
                Assert.True(await tokens.MoveNextAsync());
            }
            Assert.NotNull(tokens.Current.Finish);
            Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=length");
        }
        finally
        {
            await tokens.DisposeAsync();
        }
        // Disposal does not count it a second time.
        Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=length");
    }

    [Fact]
    public async Task QueueFull_CountsRejected_AndFailure_CountsError()
    {
        using var recorder = new Recorder();
        using var instruments = new CoordinatorInstruments();
        var full = new InstrumentedGenerationScheduler(
            new FakeGenerationScheduler { Admission = _ => new QueueFullException("full", TimeSpan.FromSeconds(1)) }, instruments);
        await Assert.ThrowsAsync<QueueFullException>(async () =>
        {
            await foreach (var _ in full.GenerateAsync(Request("r2", 4), CancellationToken.None))
            {
            }
        });
        var failing = new InstrumentedGenerationScheduler(new FakeGenerationScheduler { FailAfter = 2 }, instruments);
        await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await foreach (var _ in failing.GenerateAsync(Request("r3", 8), CancellationToken.None))
            {
            }
        });
        Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=rejected");
        Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=error");
    }

    [Fact]
    public async Task ConsumerStopsEarly_CountsCancelled()
    {
        using var recorder = new Recorder();
        using var instruments = new CoordinatorInstruments();
        var scheduler = new InstrumentedGenerationScheduler(new FakeGenerationScheduler(), instruments);
        await foreach (var _ in scheduler.GenerateAsync(Request("r4", 8), CancellationToken.None))
        {
            break;
        }
        Assert.Single(recorder.Measurements, m => m.Name == "moe.requests" && m.Tags == "outcome=cancelled");
    }
}
