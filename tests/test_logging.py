"""tracewriter's logging: the application's structlog configuration applies, repeats are limited."""

from __future__ import annotations

import logging

import pytest
import structlog

from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter.cli._main import _library_logs_to_stderr


def test_structlog_configured_after_import_still_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A level filter the application configures after importing tracewriter filters its logs."""
    log = get_logger("test")
    try:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        log.info("quiet_event")
        log.warning("loud_event", answer=42)
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "quiet_event" not in out
    assert "loud_event" in out and "component=test" in out


def test_rate_limited_log_logs_once_per_interval_and_counts_the_rest() -> None:
    """Repeats within the interval are held back and reported as `suppressed` next time."""
    now = [0.0]
    with structlog.testing.capture_logs() as logs:
        limited = RateLimitedLog(
            get_logger("test"), "flush_failed", interval=10.0, clock=lambda: now[0]
        )
        assert limited.hit(n=1)
        assert not limited.hit(n=2)
        assert not limited.hit(n=3)
        now[0] = 10.5
        assert limited.hit(n=4)
    assert [(e["event"], e["n"], e["suppressed"]) for e in logs] == [
        ("flush_failed", 1, 0),
        ("flush_failed", 4, 2),
    ]


def test_the_command_line_moves_only_tracewriters_lines_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Inside the CLI's log routing, tracewriter's warnings go to stderr and its info lines are
    dropped, while another library's structlog events stay on stdout untouched."""
    ours = get_logger("test")
    theirs = structlog.get_logger("someone_else")
    with _library_logs_to_stderr():
        ours.info("our_quiet_event")
        ours.warning("our_loud_event")
        theirs.info("their_event")
    ours.info("after_routing")
    out, err = capsys.readouterr()
    assert "our_loud_event" in err and "our_loud_event" not in out
    assert "our_quiet_event" not in out + err
    assert "their_event" in out and "their_event" not in err
    assert "after_routing" in out  # the configuration is restored afterwards
