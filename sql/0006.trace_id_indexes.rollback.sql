-- Undo 0006.trace_id_indexes: the single-column trace_id indexes of 0001, on every partition.

CREATE INDEX IF NOT EXISTS traces_trace_id_idx ON observability.traces (trace_id);
CREATE INDEX IF NOT EXISTS spans_trace_id_idx ON observability.spans (trace_id);
CREATE INDEX IF NOT EXISTS chat_messages_trace_id_idx ON observability.chat_messages (trace_id);
CREATE INDEX IF NOT EXISTS document_events_trace_id_idx
    ON observability.document_events (trace_id);
