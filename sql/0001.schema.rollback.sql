-- Undo 0001.schema. The timescaledb extension stays: other schemas may use it.
-- Dropping a parent drops its partitions (or, on TimescaleDB, its chunks). The schema is dropped
-- without CASCADE: anything else someone created in it stops the rollback instead of vanishing.

DROP FUNCTION observability.drop_partitions_older_than(interval);
DROP FUNCTION observability.ensure_partitions(integer, integer);
DROP FUNCTION observability.prune_applied_batches(interval);
DROP FUNCTION observability._copy_parent_grants(regclass);
DROP FUNCTION observability.partitioning_mode();
DROP FUNCTION observability.histogram_quantile(bigint[], double precision);
DROP AGGREGATE observability.histogram_sum(bigint[]);
DROP FUNCTION observability.histogram_add(bigint[], bigint[]);

DROP TABLE observability.applied_batches;
DROP TABLE observability.dead_letters;
DROP TABLE observability.provider_sync_status;
DROP TABLE observability.metrics_aggregates;
DROP TABLE observability.document_events;
DROP TABLE observability.chat_messages;
DROP TABLE observability.spans;
DROP TABLE observability.traces;

DROP SCHEMA observability;
