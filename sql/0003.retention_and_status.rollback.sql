-- Undo 0003.retention_and_status. Policies already added stay with TimescaleDB (remove them
-- with its remove_retention_policy / remove_compression_policy); only our functions go.

-- 0001's drop_partitions_older_than as it was, before this migration made it count what
-- drop_old_partitions drops.
CREATE OR REPLACE FUNCTION observability.drop_partitions_older_than(p_older_than interval)
RETURNS integer
LANGUAGE plpgsql
-- pg_get_expr renders partition bounds in the session's DateStyle; pin one that reads back
-- unambiguously.
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $fn$
DECLARE
    v_cutoff timestamptz := now() - p_older_than;
    v_dropped integer := 0;
    v_count integer;
    v_extension_schema name;
    v_table text;
    v_partition record;
    v_upper timestamptz;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'drop_partitions_older_than: interval must be >= 0, got %', p_older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF observability.partitioning_mode() = 'timescaledb' THEN
        SELECT n.nspname INTO v_extension_schema
        FROM pg_catalog.pg_extension AS e
        JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'timescaledb';
        FOREACH v_table IN ARRAY
            ARRAY['traces', 'spans', 'document_events', 'chat_messages', 'metrics_aggregates']
        LOOP
            EXECUTE format('SELECT count(*) FROM %I.drop_chunks(%L::regclass, older_than => $1)',
                           v_extension_schema, 'observability.' || v_table)
                INTO v_count
                USING v_cutoff;
            v_dropped := v_dropped + v_count;
        END LOOP;
        RETURN v_dropped;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('tracewriter.observability.partitions'));
    FOR v_partition IN
        SELECT child.oid::regclass AS partition,
               pg_get_expr(child.relpartbound, child.oid) AS bound
        FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS parent ON parent.oid = i.inhparent
        JOIN pg_catalog.pg_class AS child ON child.oid = i.inhrelid
        WHERE parent.relnamespace = 'observability'::regnamespace
          AND parent.relkind = 'p'
          AND child.relispartition
    LOOP
        -- The DEFAULT partition has no upper bound; neither has one ending at MAXVALUE.
        v_upper := substring(v_partition.bound FROM '\)\s+TO\s+\(''([^'']+)''\)')::timestamptz;
        IF v_upper IS NOT NULL AND v_upper <= v_cutoff THEN
            EXECUTE format('DROP TABLE %s', v_partition.partition);
            v_dropped := v_dropped + 1;
        END IF;
    END LOOP;
    RETURN v_dropped;
END
$fn$;

DROP FUNCTION observability.drop_old_partitions(interval, text, boolean);
DROP FUNCTION observability.add_compression_policy(interval);
DROP FUNCTION observability.add_retention_policy(interval);
DROP FUNCTION observability._add_policies(text, text, interval);
DROP FUNCTION observability._timescale_feature(text);
DROP FUNCTION observability.timescaledb_license();

ALTER TABLE observability.provider_sync_status DROP COLUMN consecutive_failures;
