-- Undo 0005.trace_keys: back to local tables keyed by (id, "timestamp"), and 0001's
-- ensure_partitions. Trace ids given to messages and events that had none stay: they are valid.
--
-- On Citus the four tables are first turned back into local tables on the coordinator
-- (undistribute_table copies their rows back from the shards), children before the table they
-- are co-located with.

DO $citus$
DECLARE
    v_schema name;
    v_table text;
    v_distributed boolean;
BEGIN
    SELECT n.nspname INTO v_schema
    FROM pg_catalog.pg_extension AS e
    JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'citus';
    IF v_schema IS NULL THEN
        RETURN;
    END IF;
    -- Replacing ensure_partitions below is a function command, which Citus runs over one
    -- connection per node; it refuses one after parallel shard work in the same transaction.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOREACH v_table IN ARRAY ARRAY['document_events', 'chat_messages', 'spans', 'traces'] LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.pg_dist_partition WHERE logicalrelid = %L::regclass)',
                       'pg_catalog', 'observability.' || v_table)
            INTO v_distributed;
        IF v_distributed THEN
            EXECUTE format('SELECT %I.undistribute_table(%L::regclass)',
                           v_schema, 'observability.' || v_table);
        END IF;
    END LOOP;
END
$citus$;

ALTER TABLE observability.document_events DROP CONSTRAINT document_events_trace_key,
    ADD CONSTRAINT document_events_pkey PRIMARY KEY (id, "timestamp");
ALTER TABLE observability.chat_messages DROP CONSTRAINT chat_messages_trace_key,
    ADD CONSTRAINT chat_messages_pkey PRIMARY KEY (id, "timestamp");
ALTER TABLE observability.spans DROP CONSTRAINT spans_pkey,
    ADD CONSTRAINT spans_pkey PRIMARY KEY (id, "timestamp");
ALTER TABLE observability.traces DROP CONSTRAINT traces_pkey,
    ADD CONSTRAINT traces_pkey PRIMARY KEY (id, "timestamp");

-- 0001's version, restored word for word: a database rolled back to 0002 must behave as one
-- that never had 0005.
CREATE OR REPLACE FUNCTION observability.ensure_partitions(
    p_days_back integer DEFAULT 1,
    p_days_ahead integer DEFAULT 7
)
RETURNS integer
LANGUAGE plpgsql
-- The writer role may call this but owns nothing: it runs as the owner of the tables. With
-- search_path pinned, a caller cannot redirect any name below to objects of its own.
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_created integer := 0;
    v_spec record;
    v_day date;
    v_name text;
    v_partition text;
    v_parent text;
    v_default text;
    v_columns text;
    v_from timestamptz;
    v_to timestamptz;
BEGIN
    IF p_days_back IS NULL OR p_days_ahead IS NULL OR p_days_back < 0 OR p_days_ahead < 0 THEN
        RAISE EXCEPTION 'ensure_partitions: days back and ahead must be >= 0, got % and %',
            p_days_back, p_days_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF observability.partitioning_mode() <> 'native' THEN
        RETURN 0;  -- TimescaleDB creates chunks as rows arrive.
    END IF;

    -- One creator at a time in this database; a concurrent caller waits and then finds the work done.
    PERFORM pg_advisory_xact_lock(hashtext('tracewriter.observability.partitions'));

    FOR v_spec IN
        SELECT * FROM (VALUES
            ('traces', 1), ('spans', 1), ('document_events', 1),
            ('chat_messages', 7), ('metrics_aggregates', 7)
        ) AS s(table_name, width_days)
    LOOP
        v_parent := format('observability.%I', v_spec.table_name);
        v_default := format('observability.%I', v_spec.table_name || '_default');
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = v_parent::regclass AND a.attnum > 0 AND NOT a.attisdropped;

        -- Bounds are UTC midnights whatever the session's TimeZone; weekly partitions start on
        -- the ISO Monday. Plain date arithmetic keeps the session's settings out of it.
        v_day := v_today - p_days_back;
        IF v_spec.width_days = 7 THEN
            v_day := v_day - (extract(isodow FROM v_day)::integer - 1);
        END IF;

        WHILE v_day <= v_today + p_days_ahead LOOP
            v_name := v_spec.table_name || '_p' || to_char(v_day::timestamp, 'YYYYMMDD');
            v_partition := format('observability.%I', v_name);
            IF to_regclass(v_partition) IS NULL THEN
                v_from := v_day::timestamp AT TIME ZONE 'UTC';
                v_to := (v_day + v_spec.width_days)::timestamp AT TIME ZONE 'UTC';

                -- Create, fill, then attach: ATTACH PARTITION needs only a SHARE UPDATE
                -- EXCLUSIVE lock on the parent, so writers are not blocked, where
                -- CREATE TABLE ... PARTITION OF would take an ACCESS EXCLUSIVE one.
                EXECUTE format(
                    'CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                    v_partition, v_parent);

                -- PostgreSQL refuses a partition whose range covers rows sitting in DEFAULT
                -- (a backfill, a skewed clock, partitions not kept ahead). Move them into the
                -- new table first, holding DEFAULT locked (ATTACH takes this lock anyway) so
                -- that no such row arrives between the move and the attach.
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_default);
                EXECUTE format(
                    'WITH moved AS (DELETE FROM %1$s WHERE "timestamp" >= $1 AND "timestamp" < $2 '
                    'RETURNING %3$s) INSERT INTO %2$s (%3$s) SELECT %3$s FROM moved',
                    v_default, v_partition, v_columns)
                    USING v_from, v_to;

                EXECUTE format(
                    'ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                    v_parent, v_partition,
                    to_char(v_day::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00',
                    to_char((v_day + v_spec.width_days)::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00');
                PERFORM observability._copy_parent_grants(v_partition::regclass);
                v_created := v_created + 1;
            END IF;
            v_day := v_day + v_spec.width_days;
        END LOOP;
    END LOOP;
    RETURN v_created;
END
$fn$;
