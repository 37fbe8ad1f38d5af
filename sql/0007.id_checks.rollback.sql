-- Undo 0007.id_checks: the counted-regex id checks of 0001, under the same names.

ALTER TABLE observability.traces DROP CONSTRAINT traces_trace_id_check;
ALTER TABLE observability.traces ADD CONSTRAINT traces_trace_id_check
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32));
ALTER TABLE observability.traces DROP CONSTRAINT traces_span_id_check;
ALTER TABLE observability.traces ADD CONSTRAINT traces_span_id_check
    CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16));

ALTER TABLE observability.spans DROP CONSTRAINT spans_trace_id_check;
ALTER TABLE observability.spans ADD CONSTRAINT spans_trace_id_check
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32));
ALTER TABLE observability.spans DROP CONSTRAINT spans_span_id_check;
ALTER TABLE observability.spans ADD CONSTRAINT spans_span_id_check
    CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16));
ALTER TABLE observability.spans DROP CONSTRAINT spans_parent_span_id_check;
ALTER TABLE observability.spans ADD CONSTRAINT spans_parent_span_id_check
    CHECK (parent_span_id ~ '^[0-9a-f]{16}$'
           AND parent_span_id <> repeat('0', 16));

ALTER TABLE observability.chat_messages DROP CONSTRAINT chat_messages_trace_id_check;
ALTER TABLE observability.chat_messages ADD CONSTRAINT chat_messages_trace_id_check
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32));
ALTER TABLE observability.chat_messages DROP CONSTRAINT chat_messages_span_id_check;
ALTER TABLE observability.chat_messages ADD CONSTRAINT chat_messages_span_id_check
    CHECK (span_id ~ '^[0-9a-f]{16}$' AND span_id <> repeat('0', 16));

ALTER TABLE observability.document_events DROP CONSTRAINT document_events_trace_id_check;
ALTER TABLE observability.document_events ADD CONSTRAINT document_events_trace_id_check
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32));
