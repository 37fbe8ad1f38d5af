-- Undo 0003.timescaledb_policies. Policies already added stay with TimescaleDB (remove them
-- with its remove_retention_policy / remove_compression_policy); only our functions go.

DROP FUNCTION observability.add_compression_policy(interval);
DROP FUNCTION observability.add_retention_policy(interval);
DROP FUNCTION observability._add_policies(text, text, interval);
DROP FUNCTION observability._timescale_feature(text);
DROP FUNCTION observability.timescaledb_license();
