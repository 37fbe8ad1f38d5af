-- The failure streak in provider_sync_status, and retention, by the owner: whole partitions (native) or chunks (TimescaleDB) older than an age,
-- listed or dropped per table, never row by row; and the opt-in TimescaleDB policies, retention
-- and compression run by TimescaleDB's own background jobs.
--
-- observability.drop_old_partitions is what `tracewriter retention` calls; the older
-- drop_partitions_older_than (0001) now counts what it drops, so the rule lives in one place.
--
-- The TimescaleDB policies are opt-in too. They are never defaults, and they exist only in TimescaleDB's Timescale-License build:
-- the Apache-2.0 build has hypertables and drop_chunks but no compression and no background
-- policies. So each function detects what the server has and, where the feature is missing,
-- fails with a message that names it and what to do instead, rather than assuming it.
--
-- Run them as the owner of the observability tables (TimescaleDB checks ownership); the writer
-- role may not. Retention that works on every server is observability.drop_partitions_older_than,
-- scheduled from cron or pg_cron.
-- depends: 0002.roles

-- How many flushes in a row failed with last_error: the streak is ongoing while last_error_at
-- is later than last_success_at, and over (its final length kept) once a flush succeeded.
ALTER TABLE observability.provider_sync_status
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0;

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

-- Every partition (native) or chunk (TimescaleDB) of the time-partitioned tables whose time range
-- ends at or before now() - p_older_than, for one table (p_table) or all; dropped unless
-- p_dry_run. Never a DEFAULT partition (it has no upper bound). Returns what it found.
CREATE FUNCTION observability.drop_old_partitions(
    p_older_than interval,
    p_table text DEFAULT NULL,
    p_dry_run boolean DEFAULT false
)
RETURNS TABLE (table_name text, partition_name text, range_end timestamptz)
LANGUAGE plpgsql
-- pg_get_expr renders partition bounds in the session's DateStyle; pin one that reads back
-- unambiguously.
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $fn$
DECLARE
    v_cutoff timestamptz := now() - p_older_than;
    v_all text[] := ARRAY['traces', 'spans', 'document_events', 'chat_messages',
                          'metrics_aggregates'];
    v_tables text[];
    v_extension_schema name;
    v_table text;
    v_found record;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'drop_old_partitions: interval must be >= 0, got %', p_older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_table IS NOT NULL AND NOT p_table = ANY (v_all) THEN
        RAISE EXCEPTION 'drop_old_partitions: % is not a time-partitioned table (one of %)',
                        p_table, array_to_string(v_all, ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_tables := CASE WHEN p_table IS NULL THEN v_all ELSE ARRAY[p_table] END;

    IF observability.partitioning_mode() = 'timescaledb' THEN
        SELECT n.nspname INTO v_extension_schema
        FROM pg_catalog.pg_extension AS e
        JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'timescaledb';
        FOREACH v_table IN ARRAY v_tables LOOP
            -- The chunks drop_chunks(older_than) drops: those whose range ends by the cut-off.
            FOR v_found IN
                SELECT c.chunk_schema || '.' || c.chunk_name AS chunk, c.range_end AS upper
                FROM timescaledb_information.chunks AS c
                WHERE c.hypertable_schema = 'observability' AND c.hypertable_name = v_table
                  AND c.range_end <= v_cutoff
                ORDER BY c.range_end
            LOOP
                table_name := v_table;
                partition_name := v_found.chunk;
                range_end := v_found.upper;
                RETURN NEXT;
            END LOOP;
            IF NOT p_dry_run THEN
                EXECUTE format('SELECT count(*) FROM %I.drop_chunks(%L::regclass, older_than => $1)',
                               v_extension_schema, 'observability.' || v_table)
                    USING v_cutoff;
            END IF;
        END LOOP;
        RETURN;
    END IF;

    IF NOT p_dry_run THEN
        PERFORM pg_advisory_xact_lock(hashtext('tracewriter.observability.partitions'));
    END IF;
    FOR v_found IN
        SELECT parent.relname::text AS parent, child.oid::regclass::text AS partition,
               substring(pg_get_expr(child.relpartbound, child.oid)
                         FROM '\)\s+TO\s+\(''([^'']+)''\)')::timestamptz AS upper
        FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS parent ON parent.oid = i.inhparent
        JOIN pg_catalog.pg_class AS child ON child.oid = i.inhrelid
        WHERE parent.relnamespace = 'observability'::regnamespace
          AND parent.relkind = 'p'
          AND parent.relname = ANY (v_tables)
          AND child.relispartition
        ORDER BY 1, 3
    LOOP
        -- The DEFAULT partition has no upper bound; neither has one ending at MAXVALUE.
        IF v_found.upper IS NOT NULL AND v_found.upper <= v_cutoff THEN
            IF NOT p_dry_run THEN
                EXECUTE format('DROP TABLE %s', v_found.partition);
            END IF;
            table_name := v_found.parent;
            partition_name := v_found.partition;
            range_end := v_found.upper;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION observability.drop_old_partitions(interval, text, boolean) IS
    'lists, and unless p_dry_run drops, the partitions (TimescaleDB: chunks) of one table or all '
    'whose range ends at or before now() - p_older_than; never the DEFAULT partition';

-- One rule for what is old: the 0001 function now counts what the new one drops.
CREATE OR REPLACE FUNCTION observability.drop_partitions_older_than(p_older_than interval)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT count(*)::integer FROM observability.drop_old_partitions(p_older_than)
$fn$;

REVOKE EXECUTE ON FUNCTION observability.drop_old_partitions(interval, text, boolean) FROM PUBLIC;
