-- The observability schema: tables, indexes, histogram functions and partition maintenance.
--
-- traces, spans and document_events are partitioned by day; chat_messages and
-- metrics_aggregates by 7 days. They become TimescaleDB hypertables when that extension can be
-- used, and natively range-partitioned tables otherwise. The choice is made inside the database
-- at migration time (first statement below); the same columns, keys and functions exist either
-- way, so the writer does not care which one it talks to.
--
-- Setting tracewriter.partitioning to 'native' or 'timescaledb' for the migrating session
-- (PGOPTIONS='-c tracewriter.partitioning=native', or ALTER DATABASE ... SET) overrides the choice.
-- depends:

-- A platform team may provision the (empty) schema for an owner role that has no CREATE
-- privilege on the database; CREATE SCHEMA IF NOT EXISTS would still demand that privilege.
DO $schema$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'observability') THEN
        CREATE SCHEMA observability;
    END IF;
END
$schema$;

COMMENT ON SCHEMA observability IS 'tracewriter: LLM/RAG traces, spans, chat messages, document events and metrics';

-- Decide the partitioning path and hand it to the later statements of this migration, which
-- yoyo runs in the same transaction, through a transaction-local setting.
--
-- Nothing here needs more than owning the database: a non-superuser owner cannot read
-- shared_preload_libraries (42501 without pg_read_all_settings), so "preloaded" is read from the
-- loader's own postmaster-context setting instead, which every role can see in pg_settings and
-- which exists only when timescaledb really was preloaded at server start (a placeholder
-- set from a configuration file would be user-context).
DO $mode$
DECLARE
    v_requested text := nullif(current_setting('tracewriter.partitioning', true), '');
    v_created boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb');
    v_available boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'timescaledb');
    v_preloaded boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_settings
        WHERE name = 'timescaledb.max_background_workers' AND context = 'postmaster');
    v_usable boolean;
    v_mode text;
BEGIN
    -- Available alone is not enough: without the library preloaded, CREATE EXTENSION
    -- timescaledb ends the session with a FATAL error no handler can catch.
    v_usable := v_created OR (v_available AND v_preloaded);

    IF v_requested IS NULL THEN
        v_mode := CASE WHEN v_usable THEN 'timescaledb' ELSE 'native' END;
    ELSIF v_requested = 'native' OR (v_requested = 'timescaledb' AND v_usable) THEN
        v_mode := v_requested;
    ELSE
        RAISE EXCEPTION 'tracewriter.partitioning = % cannot be used on this server', v_requested
            USING HINT = 'Use ''native'', or install TimescaleDB and add it to shared_preload_libraries.';
    END IF;

    IF v_mode = 'timescaledb' AND NOT v_created THEN
        BEGIN
            CREATE EXTENSION timescaledb;
        EXCEPTION WHEN insufficient_privilege THEN
            -- The owner may not create extensions here (no CREATE on the database, or a
            -- build that does not mark timescaledb trusted): native partitions still work.
            IF v_requested = 'timescaledb' THEN
                RAISE;
            END IF;
            v_mode := 'native';
            RAISE NOTICE 'tracewriter: using native partitions, not TimescaleDB hypertables: TimescaleDB is installed and preloaded, but role % may not create the extension (%). For hypertables, have a superuser run CREATE EXTENSION timescaledb in this database before migrating.', current_user, SQLERRM;
        END;
    ELSIF v_mode = 'native' AND v_requested IS NULL AND v_available AND NOT v_preloaded THEN
        RAISE NOTICE 'tracewriter: using native partitions, not TimescaleDB hypertables: TimescaleDB is installed but not in shared_preload_libraries. For hypertables, add timescaledb to shared_preload_libraries and restart the server before migrating.';
    END IF;
    PERFORM set_config('tracewriter.partitioning_mode', v_mode, true);
END
$mode$;

-- The time-partitioned tables. Their DDL is executed dynamically only because the
-- PARTITION BY clause exists on the native path alone (create_hypertable takes a plain table).
DO $tables$
DECLARE
    v_partition_by text := CASE current_setting('tracewriter.partitioning_mode')
        WHEN 'native' THEN ' PARTITION BY RANGE ("timestamp")' ELSE '' END;
BEGIN
    EXECUTE $ddl$
        CREATE TABLE observability.traces (
            id            uuid NOT NULL,
            "timestamp"   timestamptz NOT NULL,
            trace_id      text NOT NULL
                CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32)),
            span_id       text NOT NULL
                CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16)),
            name          text,
            user_id       text,
            session_id    text,
            kb_id         text,
            status        text NOT NULL DEFAULT 'open',
            duration_ms   double precision,
            error_type    text,
            error_message text,
            metadata      jsonb,
            PRIMARY KEY (id, "timestamp")
        )$ddl$ || v_partition_by;

    EXECUTE $ddl$
        CREATE TABLE observability.spans (
            id                  uuid NOT NULL,
            "timestamp"         timestamptz NOT NULL,
            trace_id            text NOT NULL
                CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32)),
            span_id             text NOT NULL
                CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16)),
            parent_span_id      text
                CHECK (parent_span_id ~ '^[0-9a-f]{16}$' AND parent_span_id <> repeat('0', 16)),
            name                text,
            span_type           text,
            status              text NOT NULL DEFAULT 'open',
            duration_ms         double precision,
            error_type          text,
            error_message       text,
            model               text,
            provider            text,
            input_tokens        integer,
            output_tokens       integer,
            cached_input_tokens integer,
            reasoning_tokens    integer,
            user_id             text,
            session_id          text,
            kb_id               text,
            metadata            jsonb,
            PRIMARY KEY (id, "timestamp")
        )$ddl$ || v_partition_by;

    EXECUTE $ddl$
        CREATE TABLE observability.chat_messages (
            id              uuid NOT NULL,
            "timestamp"     timestamptz NOT NULL,
            trace_id        text
                CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32)),
            span_id         text
                CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16)),
            session_id      text,
            user_id         text,
            kb_id           text,
            role            text NOT NULL,
            content         text NOT NULL,
            content_preview text NOT NULL CHECK (char_length(content_preview) <= 500),
            token_count     integer,
            metadata        jsonb,
            PRIMARY KEY (id, "timestamp")
        )$ddl$ || v_partition_by;

    EXECUTE $ddl$
        CREATE TABLE observability.document_events (
            id            uuid NOT NULL,
            "timestamp"   timestamptz NOT NULL,
            trace_id      text
                CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32)),
            kb_id         text NOT NULL,
            document_id   text NOT NULL,
            event_type    text NOT NULL,
            status        text NOT NULL,
            duration_ms   double precision,
            chunk_count   integer,
            error_type    text,
            error_message text,
            metadata      jsonb,
            PRIMARY KEY (id, "timestamp")
        )$ddl$ || v_partition_by;

    -- One row per minute bucket and dimensions. Dimensions hold '' for "none" so that the
    -- unique key below works without NULLS NOT DISTINCT (PostgreSQL 15+ only).
    EXECUTE $ddl$
        CREATE TABLE observability.metrics_aggregates (
            id          uuid NOT NULL,
            "timestamp" timestamptz NOT NULL,
            metric      text NOT NULL,
            span_type   text NOT NULL DEFAULT '',
            model       text NOT NULL DEFAULT '',
            kb_id       text NOT NULL DEFAULT '',
            status      text NOT NULL DEFAULT '',
            count       bigint NOT NULL,
            sum         double precision NOT NULL,
            min         double precision,
            max         double precision,
            histogram   bigint[] NOT NULL CHECK (cardinality(histogram) = 40),
            PRIMARY KEY (id, "timestamp")
        )$ddl$ || v_partition_by;
END
$tables$;

COMMENT ON COLUMN observability.metrics_aggregates."timestamp" IS 'start of the minute bucket';
COMMENT ON COLUMN observability.metrics_aggregates.histogram IS
    '40 log-scale buckets: [0] < 1; [i] in [sqrt(2)^(i-1), sqrt(2)^i) for i in 1..38; [39] >= sqrt(2)^38';

-- The writer's additive upsert names exactly these columns, in this order, as its conflict target.
CREATE UNIQUE INDEX metrics_aggregates_bucket_key
    ON observability.metrics_aggregates ("timestamp", metric, span_type, model, kb_id, status);
CREATE INDEX metrics_aggregates_metric_timestamp_idx
    ON observability.metrics_aggregates (metric, "timestamp" DESC);

CREATE INDEX traces_trace_id_idx ON observability.traces (trace_id);
CREATE INDEX traces_timestamp_idx ON observability.traces ("timestamp" DESC);
CREATE INDEX traces_user_id_timestamp_idx ON observability.traces (user_id, "timestamp" DESC);
CREATE INDEX traces_session_id_timestamp_idx ON observability.traces (session_id, "timestamp" DESC);
CREATE INDEX traces_kb_id_timestamp_idx ON observability.traces (kb_id, "timestamp" DESC);
CREATE INDEX traces_error_timestamp_idx ON observability.traces ("timestamp" DESC)
    WHERE status = 'error';

CREATE INDEX spans_trace_id_idx ON observability.spans (trace_id);
CREATE INDEX spans_timestamp_idx ON observability.spans ("timestamp" DESC);
CREATE INDEX spans_span_type_timestamp_idx ON observability.spans (span_type, "timestamp" DESC);
CREATE INDEX spans_model_timestamp_idx ON observability.spans (model, "timestamp" DESC)
    WHERE model IS NOT NULL;
CREATE INDEX spans_error_timestamp_idx ON observability.spans ("timestamp" DESC)
    WHERE status = 'error';

CREATE INDEX chat_messages_trace_id_idx ON observability.chat_messages (trace_id);
CREATE INDEX chat_messages_timestamp_idx ON observability.chat_messages ("timestamp" DESC);
CREATE INDEX chat_messages_user_id_timestamp_idx
    ON observability.chat_messages (user_id, "timestamp" DESC);
CREATE INDEX chat_messages_session_id_timestamp_idx
    ON observability.chat_messages (session_id, "timestamp" DESC);
CREATE INDEX chat_messages_kb_id_timestamp_idx
    ON observability.chat_messages (kb_id, "timestamp" DESC);

CREATE INDEX document_events_trace_id_idx ON observability.document_events (trace_id);
CREATE INDEX document_events_timestamp_idx ON observability.document_events ("timestamp" DESC);
CREATE INDEX document_events_kb_id_timestamp_idx
    ON observability.document_events (kb_id, "timestamp" DESC);
CREATE INDEX document_events_document_id_timestamp_idx
    ON observability.document_events (kb_id, document_id, "timestamp" DESC);
CREATE INDEX document_events_error_timestamp_idx ON observability.document_events ("timestamp" DESC)
    WHERE status = 'error';

-- Plain tables.

CREATE TABLE observability.provider_sync_status (
    provider        text PRIMARY KEY,
    last_flush_at   timestamptz,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    rows_sent       bigint NOT NULL DEFAULT 0,
    rows_failed     bigint NOT NULL DEFAULT 0,
    rows_dropped    bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Rows the database refused, kept as text so that nothing about them can be refused again.
CREATE TABLE observability.dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    target_table text NOT NULL,
    row_data     text NOT NULL,
    error        text NOT NULL,
    sqlstate     text
);
CREATE INDEX dead_letters_created_at_idx ON observability.dead_letters (created_at);

-- The writer claims a batch id here in the same statement as its additive metrics upsert, so
-- that a retry of an upsert whose commit was not acknowledged is never counted twice.
CREATE TABLE observability.applied_batches (
    batch_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applied_batches_applied_at_idx ON observability.applied_batches (applied_at);

-- Histograms.

CREATE FUNCTION observability.histogram_add(a bigint[], b bigint[])
RETURNS bigint[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(
            SELECT coalesce(a[i], 0) + coalesce(b[i], 0)
            FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
            ORDER BY i
        )
    END
$fn$;

COMMENT ON FUNCTION observability.histogram_add(bigint[], bigint[]) IS
    'element-wise sum of two histograms; a NULL side counts as empty';

-- Sums histograms over rows: histogram_quantile(histogram_sum(histogram), 0.95).
CREATE AGGREGATE observability.histogram_sum(bigint[]) (
    SFUNC = observability.histogram_add,
    STYPE = bigint[],
    COMBINEFUNC = observability.histogram_add,
    PARALLEL = SAFE
);

CREATE FUNCTION observability.histogram_quantile(hist bigint[], q double precision)
RETURNS double precision
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
AS $fn$
    -- The upper bound of the bucket holding the ceil(q * total)-th value: 1 for bucket 0,
    -- sqrt(2)^k = 2^(k/2) for bucket k (exact powers of two for even k). The last bucket has no
    -- upper bound; like Prometheus, answer its lower bound, 2^19.
    SELECT CASE
        WHEN s.k = 0 THEN 1.0::double precision
        WHEN s.k >= 39 THEN power(2.0::double precision, 19)
        ELSE power(2.0::double precision, s.k / 2.0)
    END
    FROM (
        SELECT u.i - 1 AS k,
               sum(coalesce(u.c, 0)) OVER (ORDER BY u.i) AS running,
               sum(coalesce(u.c, 0)) OVER () AS total
        FROM unnest(hist) WITH ORDINALITY AS u(c, i)
    ) AS s
    WHERE s.total > 0
      -- the epsilon keeps float noise (0.3 * 10 = 3.0000000000000004) from skipping a rank
      AND s.running >= greatest(1, ceil(least(greatest(q, 0.0), 1.0) * s.total - 1e-9))
    ORDER BY s.k
    LIMIT 1
$fn$;

COMMENT ON FUNCTION observability.histogram_quantile(bigint[], double precision) IS
    'upper bound of the bucket holding the q-th value (q in [0, 1]); NULL for an empty histogram';

-- Partition maintenance.

CREATE FUNCTION observability.partitioning_mode()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE c.relkind WHEN 'p' THEN 'native' ELSE 'timescaledb' END
    FROM pg_catalog.pg_class AS c
    WHERE c.oid = 'observability.traces'::regclass
$fn$;

COMMENT ON FUNCTION observability.partitioning_mode() IS
    '''native'' (declarative range partitions) or ''timescaledb'' (hypertables)';

-- Gives a partition the table-level privileges of its parent. Direct access to a partition is
-- checked against the partition's own ACL, so a partition created after the roles migration
-- must not be left readable only by its owner.
CREATE FUNCTION observability._copy_parent_grants(p_partition regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_grant record;
BEGIN
    FOR v_grant IN
        SELECT a.privilege_type,
               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
        FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS parent ON parent.oid = i.inhparent
        CROSS JOIN LATERAL aclexplode(parent.relacl) AS a
        LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
        WHERE i.inhrelid = p_partition AND a.grantee <> parent.relowner
    LOOP
        EXECUTE format('GRANT %s ON TABLE %s TO %s', v_grant.privilege_type, p_partition, v_grant.grantee);
    END LOOP;
END
$fn$;

REVOKE EXECUTE ON FUNCTION observability._copy_parent_grants(regclass) FROM PUBLIC;

CREATE FUNCTION observability.ensure_partitions(
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

REVOKE EXECUTE ON FUNCTION observability.ensure_partitions(integer, integer) FROM PUBLIC;

COMMENT ON FUNCTION observability.ensure_partitions(integer, integer) IS
    'creates the missing partitions from p_days_back days ago to p_days_ahead days ahead (UTC); '
    'returns how many it created; 0 on TimescaleDB';

CREATE FUNCTION observability.drop_partitions_older_than(p_older_than interval)
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

COMMENT ON FUNCTION observability.drop_partitions_older_than(interval) IS
    'drops the partitions (TimescaleDB: chunks) whose range ends at or before now() - p_older_than; '
    'never the DEFAULT partition; returns how many it dropped';

-- The writer prunes the batch ids it no longer needs through this function, so that it needs no
-- DELETE privilege on any table.
CREATE FUNCTION observability.prune_applied_batches(p_older_than interval)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_deleted integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_applied_batches: interval must be >= 0, got %', p_older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM observability.applied_batches WHERE applied_at < now() - p_older_than;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$fn$;

REVOKE EXECUTE ON FUNCTION observability.prune_applied_batches(interval) FROM PUBLIC;

COMMENT ON FUNCTION observability.prune_applied_batches(interval) IS
    'deletes applied_batches rows older than p_older_than; returns how many';

-- Turn the tables into hypertables, or give them their DEFAULT partitions and the partitions
-- from 7 days back to 7 days ahead.
DO $partitions$
DECLARE
    v_extension_schema name;
    v_spec record;
BEGIN
    IF current_setting('tracewriter.partitioning_mode') = 'timescaledb' THEN
        SELECT n.nspname INTO v_extension_schema
        FROM pg_catalog.pg_extension AS e
        JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'timescaledb';
        FOR v_spec IN
            SELECT * FROM (VALUES
                ('traces', interval '1 day'), ('spans', interval '1 day'),
                ('document_events', interval '1 day'),
                ('chat_messages', interval '7 days'), ('metrics_aggregates', interval '7 days')
            ) AS s(table_name, chunk_interval)
        LOOP
            -- Dynamic so that this file parses where the extension does not exist. This
            -- signature is valid throughout TimescaleDB 2.x. Our own indexes are created above.
            EXECUTE format(
                'SELECT %I.create_hypertable(%L::regclass, %L::name, '
                'chunk_time_interval => %L::interval, create_default_indexes => false)',
                v_extension_schema, 'observability.' || v_spec.table_name, 'timestamp',
                v_spec.chunk_interval);
        END LOOP;
    ELSE
        FOR v_spec IN
            SELECT unnest(ARRAY['traces', 'spans', 'document_events', 'chat_messages',
                                'metrics_aggregates']) AS table_name
        LOOP
            EXECUTE format('CREATE TABLE observability.%I PARTITION OF observability.%I DEFAULT',
                           v_spec.table_name || '_default', v_spec.table_name);
        END LOOP;
        PERFORM observability.ensure_partitions(7, 7);
    END IF;
END
$partitions$;
