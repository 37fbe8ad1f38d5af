-- Least-privilege group roles (NOLOGIN) for services that use the observability schema:
--   tracewriter_writer  what the writer's statements need, and nothing else;
--   tracewriter_reader  SELECT only.
-- Grant them to the login roles your services connect as, e.g.
--   CREATE ROLE my_app LOGIN PASSWORD '...' IN ROLE tracewriter_writer;
--
-- Roles belong to the whole cluster: each is created once, when missing and only if the
-- migrating role may create roles (otherwise a NOTICE says so and its grants are skipped).
-- The grants are on this database's objects, repeated for every database migrated.
-- Temporary tables (the writer's retry-safe staging path) need no grant here: PostgreSQL gives
-- TEMP on every database to PUBLIC by default.
-- depends: 0001.schema

DO $roles$
DECLARE
    v_can_create boolean;
    v_role text;
    v_partition regclass;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO v_can_create
    FROM pg_catalog.pg_roles WHERE rolname = current_user;

    FOREACH v_role IN ARRAY ARRAY['tracewriter_writer', 'tracewriter_reader'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role);
        IF NOT v_can_create THEN
            RAISE NOTICE 'tracewriter: role % not created: % may not create roles; '
                'create it (NOLOGIN) as an administrator and migrate again', v_role, current_user;
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by the migration of another database
        END;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tracewriter_writer') THEN
        GRANT USAGE ON SCHEMA observability TO tracewriter_writer;
        -- COPY and INSERT of every row the writer produces.
        GRANT INSERT ON observability.traces, observability.spans, observability.chat_messages,
            observability.document_events, observability.metrics_aggregates,
            observability.provider_sync_status, observability.dead_letters,
            observability.applied_batches
            TO tracewriter_writer;
        -- The end-upserts of traces and spans, the additive metrics upsert and the provider
        -- status upsert update rows in place; nothing else is ever updated.
        GRANT UPDATE ON observability.traces, observability.spans,
            observability.metrics_aggregates, observability.provider_sync_status
            TO tracewriter_writer;
        -- SELECT, only because these statements read: INSERT ... ON CONFLICT DO UPDATE reads
        -- the stored row (count = m.count + EXCLUDED.count, t.metadata || ...), the batch
        -- claim reads applied_batches through RETURNING, and CREATE TEMP TABLE ... (LIKE t)
        -- for the staging path requires SELECT on t. dead_letters stays write-only.
        GRANT SELECT ON observability.traces, observability.spans, observability.chat_messages,
            observability.document_events, observability.metrics_aggregates,
            observability.provider_sync_status, observability.applied_batches
            TO tracewriter_writer;
        -- SECURITY DEFINER functions: partitions ahead of time, and pruning applied_batches
        -- without a DELETE privilege.
        GRANT EXECUTE ON FUNCTION observability.ensure_partitions(integer, integer),
            observability.prune_applied_batches(interval)
            TO tracewriter_writer;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tracewriter_reader') THEN
        GRANT USAGE ON SCHEMA observability TO tracewriter_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA observability TO tracewriter_reader;
    END IF;

    -- Partitions that exist already get their parent's grants; ensure_partitions does the same
    -- for those it creates later. (TimescaleDB copies hypertable grants to chunks itself.)
    FOR v_partition IN
        SELECT c.oid::regclass
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'observability'::regnamespace AND c.relispartition
    LOOP
        PERFORM observability._copy_parent_grants(v_partition);
    END LOOP;
END
$roles$;
