using System.Collections.Concurrent;
using Orleans.Serialization;
using Orleans.Storage;

namespace Distributed.ExpertWorker.Grains;

/// <summary>
/// Grain storage kept in this silo's memory (deep copies, with ETags). Orleans' memory storage keeps state in storage
/// grains spread over all silos, so losing any silo can lose the state; the placement grain is pinned to one silo
/// (<see cref="Placement.PlacementAuthorityDirector"/>), and with this storage its plan survives every loss but that
/// silo's own — e.g. the deactivation Orleans forces on activations whose directory entry lived on a silo that died.
/// Multi-host deployments with a real storage provider can register that under the same name instead.
/// </summary>
public sealed class SiloLocalGrainStorage(DeepCopier copier) : IGrainStorage
{
    private readonly ConcurrentDictionary<(string, GrainId), (object State, string ETag)> _records = new();
    private long _etag;

    /// <inheritdoc />
    public Task ReadStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        if (_records.TryGetValue((stateName, grainId), out var record))
        {
            grainState.State = copier.Copy((T)record.State);
            grainState.ETag = record.ETag;
            grainState.RecordExists = true;
        }
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public Task WriteStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        var key = (stateName, grainId);
        if (_records.TryGetValue(key, out var existing) && existing.ETag != grainState.ETag)
        {
            throw new InconsistentStateException($"state '{stateName}' of {grainId} was written by another activation", existing.ETag, grainState.ETag);
        }
        string etag = Interlocked.Increment(ref _etag).ToString(System.Globalization.CultureInfo.InvariantCulture);
        _records[key] = (copier.Copy(grainState.State)!, etag);
        grainState.ETag = etag;
        grainState.RecordExists = true;
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public Task ClearStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        _records.TryRemove((stateName, grainId), out _);
        grainState.ETag = null;
        grainState.RecordExists = false;
        return Task.CompletedTask;
    }
}
