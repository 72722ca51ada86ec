namespace Distributed.ExpertWorker.Placement;

/// <summary>Behaviour of the placement grain. Section <c>Placement</c> (every silo should use the same values).</summary>
public sealed class PlacementOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Placement";

    /// <summary>Copies of each expert across workers. Default: 1.</summary>
    public int ReplicationFactor { get; set; } = 1;

    /// <summary>Quiet time after the last registration change before a new plan is built (so N workers joining
    /// together produce one plan, not N). Default: 300 ms.</summary>
    public TimeSpan SettleDelay { get; set; } = TimeSpan.FromMilliseconds(300);

    /// <summary>How often the grain checks membership and pending rebuilds. Default: 100 ms.</summary>
    public TimeSpan CheckInterval { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Joining workers get experts at once (spread evenly onto them); false lists them with no experts until an
    /// explicit rebalance or replica change. Default: true.</summary>
    public bool AutoPlaceJoiningWorkers { get; set; } = true;

    /// <summary>Longest a staged plan may wait for its workers to load and warm their experts before the change fails
    /// and the active plan stays. Default: 5 min.</summary>
    public TimeSpan StageTimeout { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>How long the grain waits for a worker's shard grain to answer when a coordinator reports the worker
    /// unreachable; no answer in time removes the worker. Default: 2 s.</summary>
    public TimeSpan ProbeTimeout { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Every problem with these options; each message names its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (ReplicationFactor is < 1 or > 64)
        {
            errors.Add($"Placement:ReplicationFactor {ReplicationFactor} must be within [1, 64]");
        }
        if (SettleDelay < TimeSpan.Zero || SettleDelay > TimeSpan.FromMinutes(5))
        {
            errors.Add($"Placement:SettleDelay {SettleDelay} must be within [0, 5 min]");
        }
        if (CheckInterval < TimeSpan.FromMilliseconds(10) || CheckInterval > TimeSpan.FromMinutes(1))
        {
            errors.Add($"Placement:CheckInterval {CheckInterval} must be within [10 ms, 1 min]");
        }
        if (StageTimeout < TimeSpan.FromSeconds(1) || StageTimeout > TimeSpan.FromHours(2))
        {
            errors.Add($"Placement:StageTimeout {StageTimeout} must be within [1 s, 2 h]");
        }
        if (ProbeTimeout < TimeSpan.FromMilliseconds(50) || ProbeTimeout > TimeSpan.FromMinutes(1))
        {
            errors.Add($"Placement:ProbeTimeout {ProbeTimeout} must be within [50 ms, 1 min]");
        }
        return errors;
    }
}
