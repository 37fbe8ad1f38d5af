"""tracewriter: record LLM/RAG traces, spans and events into PostgreSQL without blocking.

The application calls an :class:`ObservabilityService`; recording calls return in microseconds,
never wait on the database and never raise. A background flusher writes the events with binary
COPY into the ``observability`` schema (TimescaleDB hypertables where that extension is present).
:func:`native` says whether the row path runs compiled (a wheel built with a C compiler) or as
Python.
"""

from tracewriter._config import WriterConfig
from tracewriter._context import TraceContext, current_context
from tracewriter._handles import SpanHandle
from tracewriter._native import is_native as native
from tracewriter._provider import PostgresProvider, Provider, WriterStats
from tracewriter._records import Event, EventKind
from tracewriter._service import ObservabilityService, get_instance, reset_instance
from tracewriter.errors import ConfigurationError, TracewriterError, WriterClosedError

__all__ = [
    "ConfigurationError",
    "Event",
    "EventKind",
    "ObservabilityService",
    "PostgresProvider",
    "Provider",
    "SpanHandle",
    "TraceContext",
    "TracewriterError",
    "WriterClosedError",
    "WriterConfig",
    "WriterStats",
    "current_context",
    "get_instance",
    "native",
    "reset_instance",
]
