-- Key the four trace tables by (trace_id, id, "timestamp"), and distribute them by trace_id on Citus.
--
-- One schema on every path. Citus requires every primary or unique key of a distributed table to
-- contain its distribution column, and trace_id is the column that keeps one trace (its row, its
-- spans, its chat messages and document events) on one shard. The same keys are used on plain
-- PostgreSQL and TimescaleDB, so the writer's conflict targets are one set of statements.
--
-- traces and spans: PRIMARY KEY (trace_id, id, "timestamp") (trace_id was NOT NULL already).
-- chat_messages and document_events: UNIQUE (trace_id, id, "timestamp"). Their trace_id is still
-- nullable because writers older than this migration store NULL for a message or event recorded
-- outside any trace; the existing NULLs are given the row's own id as a trace id (a one-row trace,
-- 32 lowercase hex digits like any trace id), the rule the writer applies from now on. A later
-- migration may make the column NOT NULL and the key primary once no writer stores NULL; until
-- then such a row is refused on Citus (a distribution column cannot be NULL) and dead-lettered.
--
-- Citus (the citus extension created in this database before migrating): the four tables become
-- hash-distributed by trace_id and co-located, so a trace is read from one shard and the writer's
-- staging insert stays shard-local. metrics_aggregates, provider_sync_status, dead_letters and
-- applied_batches stay plain tables on the coordinator: they are small, written once per flush,
-- and their upserts (now() in DO UPDATE, ON CONFLICT on a key without trace_id) are not what Citus
-- distributes. Time partitioning on Citus is native: TimescaleDB hypertables cannot be
-- distributed, so a database where 0001 chose TimescaleDB is refused here.
--
-- Shard count: tracewriter.shard_count for the migrating session (PGOPTIONS='-c
-- tracewriter.shard_count=16', ?options=-c%20tracewriter.shard_count%3D16 in a URI, or ALTER
-- DATABASE ... SET), default 8. Each shard is multiplied by every partition (15 a table at first)
-- and the four tables, so the default fits a cluster of a few workers; more shards pay off only
-- with more worker cores. It cannot be changed here later (see Citus' alter_distributed_table).
-- It needs only 0001's tables and functions and 0002's grants.
-- depends: 0004.sketch

DO $keys$
BEGIN
    -- The rule the writer follows for a message or event without a trace: its own row id, in hex.
    UPDATE observability.chat_messages SET trace_id = replace(id::text, '-', '')
    WHERE trace_id IS NULL;
    UPDATE observability.document_events SET trace_id = replace(id::text, '-', '')
    WHERE trace_id IS NULL;

    ALTER TABLE observability.traces DROP CONSTRAINT traces_pkey,
        ADD CONSTRAINT traces_pkey PRIMARY KEY (trace_id, id, "timestamp");
    ALTER TABLE observability.spans DROP CONSTRAINT spans_pkey,
        ADD CONSTRAINT spans_pkey PRIMARY KEY (trace_id, id, "timestamp");
    ALTER TABLE observability.chat_messages DROP CONSTRAINT chat_messages_pkey,
        ADD CONSTRAINT chat_messages_trace_key UNIQUE (trace_id, id, "timestamp");
    ALTER TABLE observability.document_events DROP CONSTRAINT document_events_pkey,
        ADD CONSTRAINT document_events_trace_key UNIQUE (trace_id, id, "timestamp");
END
$keys$;

-- ensure_partitions, as in 0001 except for how rows already in DEFAULT are moved: out to a
-- temporary table first, then the new partition is attached empty, then the rows are inserted
-- through the parent. On Citus, attaching a table that holds rows distributes copies of them to
-- the shards but leaves the original heap on the coordinator, invisible to queries and never
-- vacuumed away; attaching it empty leaves nothing behind. On plain PostgreSQL the result is the
-- same as before.
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
-- Citus sends the bounds below to the workers as text in the session's DateStyle, and a
-- worker reads them in its own: a caller's 'SQL, DMY' would be misread. Pin one both agree on.
SET datestyle = 'ISO, YMD'
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
    v_stray boolean;
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

                -- Create, then attach: ATTACH PARTITION needs only a SHARE UPDATE EXCLUSIVE lock
                -- on the parent, so writers are not blocked, where CREATE TABLE ... PARTITION OF
                -- would take an ACCESS EXCLUSIVE one.
                EXECUTE format(
                    'CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                    v_partition, v_parent);

                -- PostgreSQL refuses a partition whose range covers rows sitting in DEFAULT
                -- (a backfill, a skewed clock, partitions not kept ahead). Take them out first,
                -- holding DEFAULT locked (ATTACH takes this lock anyway) so that no such row
                -- arrives between the move and the attach.
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_default);
                EXECUTE format(
                    'SELECT EXISTS (SELECT 1 FROM %s WHERE "timestamp" >= $1 AND "timestamp" < $2)',
                    v_default)
                    INTO v_stray
                    USING v_from, v_to;
                IF v_stray THEN
                    EXECUTE format(
                        'CREATE TEMPORARY TABLE tw_moved_rows (LIKE %s) ON COMMIT DROP', v_parent);
                    EXECUTE format(
                        'WITH moved AS (DELETE FROM %1$s WHERE "timestamp" >= $1 '
                        'AND "timestamp" < $2 RETURNING %2$s) '
                        'INSERT INTO pg_temp.tw_moved_rows (%2$s) SELECT %2$s FROM moved',
                        v_default, v_columns)
                        USING v_from, v_to;
                END IF;

                EXECUTE format(
                    'ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                    v_parent, v_partition,
                    to_char(v_day::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00',
                    to_char((v_day + v_spec.width_days)::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00');
                PERFORM observability._copy_parent_grants(v_partition::regclass);

                IF v_stray THEN
                    EXECUTE format(
                        'INSERT INTO %1$s (%2$s) SELECT %2$s FROM pg_temp.tw_moved_rows',
                        v_parent, v_columns);
                    DROP TABLE pg_temp.tw_moved_rows;
                END IF;
                v_created := v_created + 1;
            END IF;
            v_day := v_day + v_spec.width_days;
        END LOOP;
    END LOOP;
    RETURN v_created;
END
$fn$;

-- Distribute on Citus. Dynamic SQL: create_distributed_table exists only where citus does.
DO $citus$
DECLARE
    v_schema name;
    v_setting text := nullif(current_setting('tracewriter.shard_count', true), '');
    v_shards integer;
    v_table text;
BEGIN
    SELECT n.nspname INTO v_schema
    FROM pg_catalog.pg_extension AS e
    JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'citus';
    IF v_schema IS NULL THEN
        RETURN;
    END IF;

    IF observability.partitioning_mode() <> 'native' THEN
        RAISE EXCEPTION 'tracewriter: TimescaleDB hypertables cannot be distributed by Citus'
            USING HINT = 'Migrate this database from scratch with '
                'tracewriter.partitioning = native (PGOPTIONS=''-c tracewriter.partitioning=native'').';
    END IF;

    IF v_setting IS NULL THEN
        v_shards := 8;
    ELSIF v_setting ~ '^[0-9]{1,5}$' AND v_setting::integer BETWEEN 1 AND 64000 THEN
        v_shards := v_setting::integer;
    ELSE
        RAISE EXCEPTION 'tracewriter.shard_count = % is not a whole number from 1 to 64000', v_setting
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    EXECUTE format('SELECT %I.create_distributed_table(%L::regclass, %L, shard_count => %s)',
                   v_schema, 'observability.traces', 'trace_id', v_shards);
    FOREACH v_table IN ARRAY ARRAY['spans', 'chat_messages', 'document_events'] LOOP
        EXECUTE format(
            'SELECT %I.create_distributed_table(%L::regclass, %L, colocate_with => %L)',
            v_schema, 'observability.' || v_table, 'trace_id', 'observability.traces');
    END LOOP;
END
$citus$;
