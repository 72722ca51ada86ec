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
        return errors;
    }
}
