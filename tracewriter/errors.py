"""The exception family of tracewriter.

Only configuration and lifecycle mistakes raise, and only at start-up or on explicit lifecycle
calls; nothing on the recording hot path raises.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "TracewriterError", "WriterClosedError"]


class TracewriterError(Exception):
    """Base class of every exception tracewriter raises on purpose."""


class ConfigurationError(TracewriterError, ValueError):
    """A setting is invalid, or the database named by the configuration cannot be used.

    Raised at construction or at ``start()``, with the setting or the cause named and any
    password redacted.
    """


class WriterClosedError(TracewriterError, RuntimeError):
    """``start()`` or ``start_sync()`` was called on a writer that has been closed (a closed
    writer does not restart; ``flush()`` on it returns False and ``close()`` does nothing)."""
