using System.Diagnostics.Metrics;
using Distributed.Coordinator.Diagnostics;
using Distributed.Coordinator.Distribution;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;

namespace Distributed.Coordinator.Tests.Diagnostics;

[Trait("Category", "Unit")]
[Collection("CoordinatorDiagnostics")] // meter listeners are process-wide
public sealed class CoordinatorInstrumentsTests
{
    // 4 layers (MoE: 1, 3) x 4 experts; worker a holds layer 1 experts 0-1 and layer 3 experts 0-3, b layer 1 experts 2-3.
    private static readonly ModelDescriptor Model = new("fp", 8, 4, 4, 4, [1, 3]);

    private static StaticPlacementSource Placement(ulong version = 3)
    {
        var a = new HelloReply { PlanVersion = version, Shards = { new ExpertShard { Layer = 1, Experts = { 0, 1 } }, new ExpertShard { Layer = 3, Experts = { 0, 1, 2, 3 } } } };
        var b = new HelloReply { PlanVersion = version, Shards = { new ExpertShard { Layer = 1, Experts = { 2, 3 } } } };
        return new StaticPlacementSource(ExpertPlacementTable.FromHandshakes(Model, [(new WorkerEndpoint("a", "x"), a), (new WorkerEndpoint("b", "y"), b)]));
    }

    private static List<(string Instrument, long Value, Dictionary<string, string> Tags)> Collect(CoordinatorInstruments instruments)
    {
        var seen = new List<(string, long, Dictionary<string, string>)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == CoordinatorInstruments.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        void OnMeasurement<T>(Instrument instrument, T value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
        {
            var dict = new Dictionary<string, string>();
            foreach (var t in tags)
            {
                dict[t.Key] = t.Value?.ToString() ?? "";
            }
            lock (seen)
            {
                seen.Add((instrument.Name, Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture), dict));
            }
        }
        listener.SetMeasurementEventCallback<long>(OnMeasurement);
        listener.SetMeasurementEventCallback<int>(OnMeasurement);
        listener.Start();
        listener.RecordObservableInstruments();
        return seen;
    }

    [Fact]
    public void ExpertLoad_UnderTheSeriesLimit_ReportsPerLayerAndExpert()
    {
        using var instruments = new CoordinatorInstruments(maxExpertSeries: 16);
        instruments.AttachPlacement(Placement(), Model.NumLayers, Model.NumExperts);
        instruments.Dispatched(1, 10, [0, 2], [5, 1], 3);
        instruments.Dispatched(1, 10, [2], [2], 3);
        instruments.Dispatched(3, 10, [3], [7], 3);

        var load = Collect(instruments).Where(m => m.Instrument == "moe.expert.routed_tokens").ToList();
        Assert.Equal(3, load.Count);
        Assert.Contains(load, m => m.Tags["layer"] == "1" && m.Tags["expert"] == "0" && m.Value == 5);
        Assert.Contains(load, m => m.Tags["layer"] == "1" && m.Tags["expert"] == "2" && m.Value == 3);
        Assert.Contains(load, m => m.Tags["layer"] == "3" && m.Tags["expert"] == "3" && m.Value == 7);
        long[] counts = instruments.ExpertLoad!.Snapshot();
        Assert.Equal(16, counts.Length);
        Assert.Equal(5, counts[1 * 4 + 0]);
        Assert.Equal(3, counts[1 * 4 + 2]);
        Assert.Equal(7, counts[3 * 4 + 3]);
        Assert.Equal(15, counts.Sum());
    }

    [Fact]
    public void ExpertLoad_OverTheSeriesLimit_SumsPerWorkerHoldingTheExperts()
    {
        using var instruments = new CoordinatorInstruments(maxExpertSeries: 15);
        instruments.AttachPlacement(Placement(), Model.NumLayers, Model.NumExperts);
        instruments.Dispatched(1, 10, [0, 1, 2, 3], [1, 2, 4, 8], 3);
        instruments.Dispatched(3, 10, [0, 3], [16, 32], 3);

        var load = Collect(instruments).Where(m => m.Instrument == "moe.expert.routed_tokens").ToList();
        Assert.All(load, m => Assert.False(m.Tags.ContainsKey("expert")));
        Assert.Equal(3, load.Count);
        Assert.Contains(load, m => m.Tags["layer"] == "1" && m.Tags["worker"] == "a" && m.Value == 3);
        Assert.Contains(load, m => m.Tags["layer"] == "1" && m.Tags["worker"] == "b" && m.Value == 12);
        Assert.Contains(load, m => m.Tags["layer"] == "3" && m.Tags["worker"] == "a" && m.Value == 48);
    }

    [Fact]
    public void PlanVersion_IsPublished_AndAChangeCountsOnePlanChangeEvent()
    {
        using var instruments = new CoordinatorInstruments();
        instruments.AttachPlacement(Placement(7), Model.NumLayers, Model.NumExperts);
        var events = new List<string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == CoordinatorInstruments.MeterName && instrument.Name == "moe.placement.events")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, _, tags, _) => events.Add((string)tags[0].Value!));
        listener.Start();
        instruments.Dispatched(1, 1, [0], [1], 7);
        instruments.Dispatched(1, 1, [0], [1], 7);
        instruments.Dispatched(1, 1, [0], [1], 8);
        Assert.Equal(["plan_change"], events);
        Assert.Contains(Collect(instruments), m => m.Instrument == "moe.placement.plan_version" && m.Value == 7);
    }

    [Fact]
    public void Constructor_RejectsANonPositiveSeriesLimit()
        => Assert.Throws<ArgumentOutOfRangeException>(() => new CoordinatorInstruments(0));
}
