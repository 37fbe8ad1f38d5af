"""structlog loggers for tracewriter, and rate limiting for repeated failures.

Owns how tracewriter logs: event names are stable snake_case identifiers, context is key-value
pairs, and a failure that repeats (an unreachable server, a full buffer) is logged once and then
at most once per interval with the count of what was suppressed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

__all__ = ["LOGGER_NAME", "RateLimitedLog", "get_logger", "is_tracewriter_event"]

LOGGER_NAME: Final = "tracewriter"


def get_logger(component: str) -> Any:
    """A structlog logger bound to ``component`` (the module that logs)."""
    # get_logger with initial values returns a lazy proxy: the application's later
    # structlog.configure() still applies (an eager .bind() here would freeze the config
    # in force when tracewriter was imported). ``logger_name`` (structlog's console renderer
    # shows it as [tracewriter]) tells our lines from the application's, for whoever routes
    # or filters them.
    return structlog.get_logger(LOGGER_NAME, logger_name=LOGGER_NAME, component=component)


def is_tracewriter_event(event_dict: Mapping[str, Any]) -> bool:
    """Whether a structlog event dict is one of tracewriter's own log lines."""
    return event_dict.get("logger_name") == LOGGER_NAME


class RateLimitedLog:
    """Log an event at most once per ``interval`` seconds, counting what it held back.

    Thread-safe; ``hit()`` is cheap when it decides not to log, so it may sit on a hot path.
    """

    __slots__ = ("_clock", "_event", "_interval", "_last", "_level", "_lock", "_log", "_suppressed")

    def __init__(
        self,
        log: Any,
        event: str,
        *,
        level: str = "warning",
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._level = level
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def hit(self, **context: Any) -> bool:
        """Record one occurrence; log it if the interval has passed. Returns whether it logged."""
        now = self._clock()
        with self._lock:
            if now - self._last < self._interval:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._last = now
        getattr(self._log, self._level)(self._event, suppressed=suppressed, **context)
        return True
