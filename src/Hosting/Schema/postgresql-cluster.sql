-- Distributed expert cluster: the PostgreSQL schema for Cluster:Clustering=AdoNet (Cluster:AdoNetInvariant=Npgsql).
-- schema-version: 1
--
-- This project's own schema, written from the contract of Orleans' ADO.NET clustering provider
-- (Microsoft.Orleans.Clustering.AdoNet 10.4.2, Orleans.Clustering.AdoNet.Storage.RelationalOrleansQueries and
-- DbStoredQueries) and of Orleans.IMembershipTable; it is not derived from the Orleans repository's SQL scripts.
-- It holds:
--   * distributed_schema             which version of this script the database holds (later migrations read it);
--   * orleansquery                   the named queries the provider loads at start-up (its table name is fixed);
--   * distributed_membership_version one row per cluster id: the membership table's version (its ETag);
--   * distributed_membership         one row per silo incarnation (address, port, generation);
--   * distributed_grain_state        grain state written by the workers (the placement plan and its operation log),
--                                    with distributed_grain_state_etag issuing ETags that are never reused.
--
-- Idempotent: every object is created only when missing and the query rows are upserted. Run it in ONE transaction
-- (the worker does; `Distributed.ExpertWorker --print-schema` prints it wrapped in BEGIN/COMMIT for psql). The
-- advisory lock below makes concurrent runs (several workers starting on an empty database) wait for each other
-- instead of racing on CREATE TABLE.
-- Objects are created in the connection's current schema (the first entry of search_path).

SELECT pg_advisory_xact_lock(5570747539801720881); -- 'MOE_SCH1': serialises every run of this script

CREATE TABLE IF NOT EXISTS distributed_schema (
    component  text PRIMARY KEY,
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Never downgrade: a database migrated by a newer release keeps that release's objects and queries. (Checked after the
-- CREATE above, whose lock on the schema refreshes this session's catalog view after waiting for the advisory lock.)
DO $guard$
DECLARE
    installed integer;
BEGIN
    SELECT version INTO installed FROM distributed_schema WHERE component = 'expert-cluster';
    IF installed > 1 THEN
        RAISE EXCEPTION 'distributed_schema holds expert-cluster schema version %, newer than this release''s version 1; run a release that knows it', installed;
    END IF;
END
$guard$;

-- The provider runs `SELECT QueryKey, QueryText FROM OrleansQuery` (unquoted, so PostgreSQL folds it to lower case)
-- and refuses to start unless every key it needs is present.
CREATE TABLE IF NOT EXISTS orleansquery (
    querykey  varchar(64) PRIMARY KEY,
    querytext text NOT NULL
);

-- IMembershipTable: every insert or update of a silo row also moves the table version from the value the silo read
-- (the provider passes it as @Version) to the next one, atomically, or fails without a side effect.
CREATE TABLE IF NOT EXISTS distributed_membership_version (
    cluster_id text PRIMARY KEY,          -- Orleans ClusterId (the provider calls it DeploymentId)
    version    integer NOT NULL DEFAULT 0 CHECK (version >= 0),
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS distributed_membership (
    cluster_id      text NOT NULL REFERENCES distributed_membership_version (cluster_id) ON DELETE CASCADE,
    address         text NOT NULL,        -- IP address of the silo endpoint
    port            integer NOT NULL,     -- silo-to-silo port
    generation      integer NOT NULL,     -- incarnation of the silo on that endpoint
    silo_name       text NOT NULL,
    host_name       text NOT NULL,
    status          integer NOT NULL,     -- Orleans SiloStatus: 2 Joining, 3 Active, 4 ShuttingDown, 5 Stopping, 6 Dead
    proxy_port      integer NOT NULL,     -- client gateway port, 0 when the silo has none
    suspect_times   text,                 -- '<silo>,<UTC time>' votes joined by '|', written and parsed by Orleans
    start_time      timestamptz NOT NULL,
    i_am_alive_time timestamptz NOT NULL,
    PRIMARY KEY (cluster_id, address, port, generation)
);

CREATE SEQUENCE IF NOT EXISTS distributed_grain_state_etag;

-- One row per (service, storage provider, state name, grain). etag changes on every write and is checked by every
-- write and clear, so two activations of one grain can never both write.
CREATE TABLE IF NOT EXISTS distributed_grain_state (
    service_id   text NOT NULL,           -- Orleans ServiceId: state outlives cluster ids, as Orleans' own storage
    storage_name text NOT NULL,           -- grain storage provider name, e.g. 'placement'
    state_name   text NOT NULL,           -- [PersistentState] name
    grain_id     text NOT NULL,           -- GrainId.ToString()
    etag         bigint NOT NULL,         -- from distributed_grain_state_etag
    payload      bytea NOT NULL,          -- the silo's IGrainStorageSerializer output
    written_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, storage_name, state_name, grain_id)
);

-- The named queries. Parameters (@Name) and result column names are the provider's; each query returns exactly the
-- rows and columns the provider's converters read.
INSERT INTO orleansquery (querykey, querytext) VALUES
-- Clients' gateway list: (Address, ProxyPort, Generation) of the silos whose Status is @Status (Active).
('GatewaysQueryKey', $q$
SELECT m.address AS "Address", m.proxy_port AS "ProxyPort", m.generation AS "Generation"
FROM distributed_membership m
WHERE m.cluster_id = @DeploymentId AND m.status = @Status AND m.proxy_port > 0
$q$),
-- Read all: one row per silo with the table version on every row, read in one statement (one snapshot). The outer
-- join still yields one row, with a NULL StartTime, when the cluster has no silo: the provider takes the version from
-- the first row and a NULL StartTime as "no entry".
('MembershipReadAllKey', $q$
SELECT v.version AS "Version",
       m.address AS "Address", m.port AS "Port", m.generation AS "Generation",
       m.silo_name AS "SiloName", m.host_name AS "HostName", m.status AS "Status", m.proxy_port AS "ProxyPort",
       m.suspect_times AS "SuspectTimes", m.start_time AS "StartTime", m.i_am_alive_time AS "IAmAliveTime"
FROM distributed_membership_version v
LEFT JOIN distributed_membership m ON m.cluster_id = v.cluster_id
WHERE v.cluster_id = @DeploymentId
$q$),
-- Read one silo (@Address, @Port, @Generation) with the table version, as above.
('MembershipReadRowKey', $q$
SELECT v.version AS "Version",
       m.address AS "Address", m.port AS "Port", m.generation AS "Generation",
       m.silo_name AS "SiloName", m.host_name AS "HostName", m.status AS "Status", m.proxy_port AS "ProxyPort",
       m.suspect_times AS "SuspectTimes", m.start_time AS "StartTime", m.i_am_alive_time AS "IAmAliveTime"
FROM distributed_membership_version v
LEFT JOIN distributed_membership m
       ON m.cluster_id = v.cluster_id AND m.address = @Address AND m.port = @Port AND m.generation = @Generation
WHERE v.cluster_id = @DeploymentId
$q$),
-- Creates the cluster's version row (version 0) unless it exists; one boolean: whether this call created it.
('InsertMembershipVersionKey', $q$
WITH created AS (
    INSERT INTO distributed_membership_version (cluster_id) VALUES (@DeploymentId)
    ON CONFLICT (cluster_id) DO NOTHING
    RETURNING 1)
SELECT count(*) = 1 FROM created
$q$),
-- Heartbeat: only i_am_alive_time changes; the table version does not (IMembershipTable.UpdateIAmAlive).
('UpdateIAmAlivetimeKey', $q$
UPDATE distributed_membership SET i_am_alive_time = @IAmAliveTime
WHERE cluster_id = @DeploymentId AND address = @Address AND port = @Port AND generation = @Generation
$q$),
-- Insert a silo row and advance the version, or do neither: the version moves only while it still equals @Version
-- and no row of that silo exists; a writer that lost the race waits on the version row's lock, then finds the
-- version changed. One boolean: whether the row was inserted.
('InsertMembershipKey', $q$
WITH bumped AS (
    UPDATE distributed_membership_version SET version = version + 1, changed_at = now()
    WHERE cluster_id = @DeploymentId AND version = @Version
      AND NOT EXISTS (SELECT 1 FROM distributed_membership
                      WHERE cluster_id = @DeploymentId AND address = @Address AND port = @Port AND generation = @Generation)
    RETURNING cluster_id),
inserted AS (
    INSERT INTO distributed_membership (cluster_id, address, port, generation, silo_name, host_name, status, proxy_port,
                                        start_time, i_am_alive_time)
    SELECT b.cluster_id, @Address, @Port, @Generation, COALESCE(@SiloName, ''), COALESCE(@HostName, ''), @Status,
           @ProxyPort, @StartTime, @IAmAliveTime
    FROM bumped b
    ON CONFLICT DO NOTHING
    RETURNING 1)
SELECT count(*) = 1 FROM inserted
$q$),
-- Update a silo's status, suspicions and heartbeat and advance the version, or do neither (as the insert above, but
-- the silo's row must exist). One boolean: whether the row was updated.
('UpdateMembershipKey', $q$
WITH bumped AS (
    UPDATE distributed_membership_version SET version = version + 1, changed_at = now()
    WHERE cluster_id = @DeploymentId AND version = @Version
      AND EXISTS (SELECT 1 FROM distributed_membership
                  WHERE cluster_id = @DeploymentId AND address = @Address AND port = @Port AND generation = @Generation)
    RETURNING cluster_id),
updated AS (
    UPDATE distributed_membership m
    SET status = @Status, suspect_times = @SuspectTimes, i_am_alive_time = @IAmAliveTime
    FROM bumped b
    WHERE m.cluster_id = b.cluster_id AND m.address = @Address AND m.port = @Port AND m.generation = @Generation
    RETURNING 1)
SELECT count(*) = 1 FROM updated
$q$),
-- Forget a cluster id entirely (its silos go with the version row).
('DeleteMembershipTableEntriesKey', $q$
DELETE FROM distributed_membership_version WHERE cluster_id = @DeploymentId
$q$),
-- Defunct-silo cleanup, all at once: Dead silos that neither started nor reported alive since @IAmAliveTime.
('CleanupDefunctSiloEntriesKey', $q$
DELETE FROM distributed_membership
WHERE cluster_id = @DeploymentId AND status = 6 AND start_time < @IAmAliveTime AND i_am_alive_time < @IAmAliveTime
$q$),
-- Defunct-silo cleanup, one silo at a time (the provider prefers it when present): deletes the Dead row it read only
-- while the row is exactly as read (times and suspicions), so a concurrent change keeps the row.
('CleanupDefunctSiloEntryKey', $q$
DELETE FROM distributed_membership
WHERE cluster_id = @DeploymentId AND address = @Address AND port = @Port AND generation = @Generation
  AND status = 6 AND start_time = @StartTime AND i_am_alive_time = @IAmAliveTime
  AND COALESCE(suspect_times, '') = COALESCE(@SuspectTimes, '')
$q$)
ON CONFLICT (querykey) DO UPDATE SET querytext = EXCLUDED.querytext;

INSERT INTO distributed_schema (component, version) VALUES ('expert-cluster', 1)
ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, applied_at = now();
