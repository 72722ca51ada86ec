using System.Globalization;
using Distributed.Hosting;
using Npgsql;
using NpgsqlTypes;
using Orleans.Storage;

namespace Distributed.ExpertWorker.Grains;

/// <summary>
/// Grain storage in the cluster's PostgreSQL database (table <see cref="PostgresClusterSchema.GrainStateTable"/> of the
/// project's schema), used for the placement plan and its operation log with <see cref="ClusteringMode.AdoNet"/>
/// membership, so they survive the loss of any silo (the placement grain re-activates on a survivor and reads them
/// back) and coordinator restarts. Rows are keyed by Orleans ServiceId, provider name, state name and grain id.
/// Optimistic concurrency: every write and clear names the ETag it read; the row changes only while it still holds that
/// ETag, and each write takes a new ETag from a sequence (never reused, even after a clear), so a stale activation's
/// write fails with <see cref="InconsistentStateException"/> instead of overwriting a newer plan.
/// </summary>
public sealed class PostgresGrainStorage : IGrainStorage, IAsyncDisposable, IDisposable
{
    private const string Table = PostgresClusterSchema.GrainStateTable;
    private const string Key = "service_id = @service AND storage_name = @storage AND state_name = @state AND grain_id = @grain";
    private readonly NpgsqlDataSource _dataSource;
    private readonly string _name;
    private readonly string _serviceId;
    private readonly IGrainStorageSerializer _serializer;

    /// <param name="name">Provider name (the <c>storage_name</c> column), e.g. <see cref="PlacementGrain.StorageName"/>.</param>
    /// <param name="connectionString">Npgsql connection string of the cluster's database.</param>
    /// <param name="serviceId">Orleans ServiceId (the <c>service_id</c> column).</param>
    /// <param name="serializer">Serializer of the state payloads (the silo's <see cref="IGrainStorageSerializer"/>).</param>
    public PostgresGrainStorage(string name, string connectionString, string serviceId, IGrainStorageSerializer serializer)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentException.ThrowIfNullOrWhiteSpace(connectionString);
        ArgumentException.ThrowIfNullOrWhiteSpace(serviceId);
        ArgumentNullException.ThrowIfNull(serializer);
        _name = name;
        _serviceId = serviceId;
        _serializer = serializer;
        _dataSource = NpgsqlDataSource.Create(connectionString);
    }

    /// <inheritdoc />
    public async Task ReadStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        await using var command = Command($"SELECT etag, payload FROM {Table} WHERE {Key}", stateName, grainId);
        await using var reader = await command.ExecuteReaderAsync().ConfigureAwait(false);
        if (await reader.ReadAsync().ConfigureAwait(false))
        {
            long etag = reader.GetInt64(0);
            // WriteStateAsync stores only what the serializer made of a state object, which reads back as one.
            grainState.State = _serializer.Deserialize<T>(new BinaryData(reader.GetFieldValue<byte[]>(1)))!;
            grainState.ETag = Format(etag);
            grainState.RecordExists = true;
        }
        else
        {
            grainState.ETag = null;
            grainState.RecordExists = false;
        }
    }

    /// <inheritdoc />
    /// <exception cref="InconsistentStateException">The row is not at <see cref="IGrainState{T}.ETag"/> (another activation wrote it, or it was created or cleared since it was read).</exception>
    public async Task WriteStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        byte[] payload = _serializer.Serialize(grainState.State).ToArray();
        NpgsqlCommand command;
        if (grainState.ETag is null)
        {
            // First write of this grain's state: only when no row exists.
            command = Command(
                $"INSERT INTO {Table} (service_id, storage_name, state_name, grain_id, etag, payload) "
                + $"VALUES (@service, @storage, @state, @grain, nextval('{PostgresClusterSchema.GrainStateETagSequence}'), @payload) "
                + "ON CONFLICT DO NOTHING RETURNING etag", stateName, grainId);
        }
        else
        {
            command = Command(
                $"UPDATE {Table} SET etag = nextval('{PostgresClusterSchema.GrainStateETagSequence}'), payload = @payload, written_at = now() "
                + $"WHERE {Key} AND etag = @etag RETURNING etag", stateName, grainId);
            command.Parameters.AddWithValue("etag", NpgsqlDbType.Bigint, Parse(grainState.ETag));
        }
        await using (command)
        {
            command.Parameters.AddWithValue("payload", NpgsqlDbType.Bytea, payload);
            if (await command.ExecuteScalarAsync().ConfigureAwait(false) is long etag)
            {
                grainState.ETag = Format(etag);
                grainState.RecordExists = true;
                return;
            }
        }
        throw await ConflictAsync("write", stateName, grainId, grainState.ETag).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <exception cref="InconsistentStateException">The row is not at <see cref="IGrainState{T}.ETag"/>.</exception>
    public async Task ClearStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        ArgumentNullException.ThrowIfNull(grainState);
        bool cleared;
        if (grainState.ETag is null)
        {
            // Nothing was read, so nothing may be there: a row written since belongs to another activation.
            await using var exists = Command($"SELECT 1 FROM {Table} WHERE {Key}", stateName, grainId);
            cleared = await exists.ExecuteScalarAsync().ConfigureAwait(false) is null;
        }
        else
        {
            await using var delete = Command($"DELETE FROM {Table} WHERE {Key} AND etag = @etag", stateName, grainId);
            delete.Parameters.AddWithValue("etag", NpgsqlDbType.Bigint, Parse(grainState.ETag));
            cleared = await delete.ExecuteNonQueryAsync().ConfigureAwait(false) == 1;
        }
        if (!cleared)
        {
            throw await ConflictAsync("clear", stateName, grainId, grainState.ETag).ConfigureAwait(false);
        }
        grainState.ETag = null;
        grainState.RecordExists = false;
    }

    /// <summary>
    /// Opens a pooled connection and runs a read of an absent row, so the first real read (the placement grain
    /// re-activating on this silo after a failure) neither waits for a new connection nor stalls the grain's thread on
    /// first-use work (a ~1 s synchronous stall was measured on a loaded 2-vCPU machine without this).
    /// </summary>
    public async Task WarmUpAsync(CancellationToken cancellationToken)
    {
        await using var command = Command($"SELECT etag, payload FROM {Table} WHERE {Key}", "warm-up", GrainId.Create("warm-up", "0"));
        await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => _dataSource.DisposeAsync();

    /// <inheritdoc />
    public void Dispose() => _dataSource.Dispose();

    private NpgsqlCommand Command(string sql, string stateName, GrainId grainId)
    {
        var command = _dataSource.CreateCommand(sql);
        command.Parameters.AddWithValue("service", NpgsqlDbType.Text, _serviceId);
        command.Parameters.AddWithValue("storage", NpgsqlDbType.Text, _name);
        command.Parameters.AddWithValue("state", NpgsqlDbType.Text, stateName);
        command.Parameters.AddWithValue("grain", NpgsqlDbType.Text, grainId.ToString());
        return command;
    }

    private async Task<InconsistentStateException> ConflictAsync(string operation, string stateName, GrainId grainId, string? expected)
    {
        await using var current = Command($"SELECT etag FROM {Table} WHERE {Key}", stateName, grainId);
        string stored = await current.ExecuteScalarAsync().ConfigureAwait(false) is long etag ? Format(etag) : "none";
        return new InconsistentStateException(
            $"{operation} of state '{stateName}' of {grainId} in {Table} (storage '{_name}') refused: the row is at ETag {stored}, this activation read {expected ?? "none"}; another activation wrote it",
            stored, expected ?? "none");
    }

    private static string Format(long etag) => etag.ToString(CultureInfo.InvariantCulture);

    // An ETag this storage did not issue can match no row: -1 is never issued by the sequence (it starts at 1).
    private static long Parse(string etag) => long.TryParse(etag, NumberStyles.None, CultureInfo.InvariantCulture, out long value) ? value : -1;
}
