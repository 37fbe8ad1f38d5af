"""tracewriter: record LLM/RAG traces, spans and events into PostgreSQL without blocking."""

from tracewriter.errors import ConfigurationError, TracewriterError, WriterClosedError

__all__ = ["ConfigurationError", "TracewriterError", "WriterClosedError"]
