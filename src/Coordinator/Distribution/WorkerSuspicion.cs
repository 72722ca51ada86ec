using System.Collections.Concurrent;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// Workers the dispatcher stopped choosing: one whose stream broke, whose connection failed or that missed a deadline
/// is suspected for <see cref="Duration"/> under the plan version it failed in (a new plan version, which may have
/// re-placed or confirmed it, clears the suspicion implicitly). Keyed by endpoint, so a worker restarted at another
/// address is a new worker. Time comes from a <see cref="TimeProvider"/>. Thread-safe.
/// </summary>
/// <param name="duration">How long a suspicion lasts.</param>
/// <param name="time">The clock.</param>
public sealed class WorkerSuspicion(TimeSpan duration, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, (ulong Version, long UntilTimestamp)> _suspects = new(StringComparer.Ordinal);

    /// <summary>How long a suspicion lasts.</summary>
    public TimeSpan Duration => duration;

    /// <summary>Suspects <paramref name="worker"/> under plan <paramref name="version"/> from now for <see cref="Duration"/>.</summary>
    public void Suspect(ulong version, WorkerEndpoint worker)
    {
        ArgumentNullException.ThrowIfNull(worker);
        long until = time.GetTimestamp() + (long)(duration.TotalSeconds * time.TimestampFrequency);
        _suspects[worker.Endpoint] = (version, until);
    }

    /// <summary>True while worker <paramref name="worker"/> of <paramref name="table"/> is suspected under that table's version.</summary>
    public bool IsSuspect(ExpertPlacementTable table, int worker)
        => _suspects.TryGetValue(table.Workers[worker].Endpoint, out var s) && s.Version == table.Version && time.GetTimestamp() < s.UntilTimestamp;

    /// <summary>Forgets the suspicion of <paramref name="worker"/> (it proved alive).</summary>
    public void Clear(WorkerEndpoint worker) => _suspects.TryRemove(worker.Endpoint, out _);
}
