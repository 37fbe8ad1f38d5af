-- Drop the single-column trace_id index of each trace table: since 0005 its key begins with
-- trace_id, and a btree answers every lookup by a leading column, so that index served nothing
-- the key does not while costing every insert a second btree update on a random 32-character
-- key. Measured on PostgreSQL 15 (2 cores, the cost benchmark's 200,000 LLM spans): the
-- server's CPU per span row fell 10-20 % (binary COPY of the same rows 48.8 -> 39.5 µs).
--
-- Lookups by trace_id (a trace's rows, the CLI's `trace` command, the end-upsert's conflict
-- target) use traces_pkey, spans_pkey, chat_messages_trace_key and document_events_trace_key.
-- On TimescaleDB and Citus the drop reaches every chunk or shard, as the CREATE did.
-- depends: 0005.trace_keys

DROP INDEX IF EXISTS observability.traces_trace_id_idx;
DROP INDEX IF EXISTS observability.spans_trace_id_idx;
DROP INDEX IF EXISTS observability.chat_messages_trace_id_idx;
DROP INDEX IF EXISTS observability.document_events_trace_id_idx;
