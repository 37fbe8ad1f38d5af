-- Opt-in TimescaleDB policies: retention and compression run by TimescaleDB's own background
-- jobs. They are never defaults, and they exist only in TimescaleDB's Timescale-License build:
-- the Apache-2.0 build has hypertables and drop_chunks but no compression and no background
-- policies. So each function detects what the server has and, where the feature is missing,
-- fails with a message that names it and what to do instead, rather than assuming it.
--
-- Run them as the owner of the observability tables (TimescaleDB checks ownership); the writer
-- role may not. Retention that works on every server is observability.drop_partitions_older_than,
-- scheduled from cron or pg_cron.
-- depends: 0002.roles

CREATE FUNCTION observability.timescaledb_license()
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF observability.partitioning_mode() <> 'timescaledb' THEN
        RETURN NULL;
    END IF;
    -- 'apache' (hypertables, drop_chunks) or 'timescale' (also compression and policies).
    RETURN coalesce(nullif(current_setting('timescaledb.license', true), ''), 'unknown');
END
$fn$;

COMMENT ON FUNCTION observability.timescaledb_license() IS
    'the TimescaleDB license of this server (apache or timescale), NULL on native partitions';

-- The schema TimescaleDB lives in, once the server is known to offer p_feature; else an error
-- that says why and what works instead.
CREATE FUNCTION observability._timescale_feature(p_feature text)
RETURNS name
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_license text := observability.timescaledb_license();
    v_schema name;
BEGIN
    IF v_license IS NULL THEN
        RAISE EXCEPTION '%: needs TimescaleDB hypertables, and this database uses native partitions', p_feature
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'For retention, schedule SELECT observability.drop_partitions_older_than(''30 days'') from cron or pg_cron.';
    END IF;
    IF v_license <> 'timescale' THEN
        RAISE EXCEPTION '%: this TimescaleDB build (timescaledb.license = %) has no compression or background policies; they need the Timescale License build', p_feature, v_license
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'For retention, schedule SELECT observability.drop_partitions_older_than(''30 days'') from cron or pg_cron; it drops whole chunks here.';
    END IF;
    SELECT n.nspname INTO v_schema
    FROM pg_catalog.pg_extension AS e
    JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'timescaledb';
    RETURN v_schema;
END
$fn$;

-- Adds the TimescaleDB policy p_function (add_retention_policy or add_compression_policy) with
-- its interval argument p_argument to every time-partitioned table; returns how many tables.
CREATE FUNCTION observability._add_policies(p_function text, p_argument text, p_after interval)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_schema name := observability._timescale_feature(p_function);
    v_table text;
    v_added integer := 0;
BEGIN
    IF p_after IS NULL OR p_after <= interval '0' THEN
        RAISE EXCEPTION '%: interval must be > 0, got %', p_function, p_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_table IN ARRAY
        ARRAY['traces', 'spans', 'document_events', 'chat_messages', 'metrics_aggregates']
    LOOP
        IF p_function = 'add_compression_policy' THEN
            -- Ordered by time within a chunk: what trace stores read back (newest first).
            EXECUTE format('ALTER TABLE observability.%I SET (timescaledb.compress, '
                           'timescaledb.compress_orderby = %L)', v_table, '"timestamp" DESC');
        END IF;
        EXECUTE format('SELECT %I.%I(%L::regclass, %I => $1, if_not_exists => true)',
                       v_schema, p_function, 'observability.' || v_table, p_argument)
            USING p_after;
        v_added := v_added + 1;
    END LOOP;
    RETURN v_added;
END
$fn$;

CREATE FUNCTION observability.add_retention_policy(p_drop_after interval)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT observability._add_policies('add_retention_policy', 'drop_after', p_drop_after)
$fn$;

COMMENT ON FUNCTION observability.add_retention_policy(interval) IS
    'TimescaleDB (Timescale License) only: a background job per table drops chunks older than '
    'p_drop_after; returns how many tables got one';

CREATE FUNCTION observability.add_compression_policy(p_compress_after interval)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT observability._add_policies('add_compression_policy', 'compress_after', p_compress_after)
$fn$;

COMMENT ON FUNCTION observability.add_compression_policy(interval) IS
    'TimescaleDB (Timescale License) only: compress chunks older than p_compress_after; returns '
    'how many tables got a policy';

REVOKE EXECUTE ON FUNCTION observability.add_retention_policy(interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION observability.add_compression_policy(interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION observability._add_policies(text, text, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION observability._timescale_feature(text) FROM PUBLIC;
