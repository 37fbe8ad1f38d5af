"""Start-up against a wrong DSN, a wrong password or an unmigrated database: loud, clear, redacted.

Configuration mistakes are the one thing that raises: ``start()`` raises ConfigurationError
naming the cause, and the password in the DSN shows in no exception text, repr or log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from tracewriter import ConfigurationError, ObservabilityService
from tracewriter.embedded import EmbeddedPostgres

from .conftest import _admin

USER = "tw_password_user"
PASSWORD = "right-Secret-42"
# Characters that URIs percent-encode, so both spellings must stay out of every message.
WRONG = "Wr0ng p@ss/w%rd:x"


def as_user(dsn: str, user: str, password: str | None) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


@pytest.fixture(scope="module")
def password_server(own_server: EmbeddedPostgres, own_db: str) -> Iterator[EmbeddedPostgres]:
    """The module's server with a role that must log in with a password (scram-sha-256)."""
    _admin(
        own_server.dsn,
        f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'",
        "CREATE DATABASE unmigrated",
    )
    _admin(
        own_db,
        f"GRANT USAGE ON SCHEMA observability TO {USER}",
        f"GRANT INSERT, SELECT, UPDATE ON ALL TABLES IN SCHEMA observability TO {USER}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA observability TO {USER}",
    )
    hba = own_server._pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {USER} scram-sha-256\n" + original)
    _admin(own_server.dsn, "SELECT pg_reload_conf()")
    try:
        yield own_server
    finally:
        hba.write_text(original)
        _admin(own_server.dsn, "SELECT pg_reload_conf()")


def cases(server: EmbeddedPostgres) -> dict[str, tuple[str, str, dict[str, object]]]:
    """name -> (dsn, text the error must contain, extra writer options)."""
    faults = server.dsn_for("faults")
    return {
        "wrong password": (
            as_user(faults, USER, WRONG),
            "password authentication failed",
            {},
        ),
        "unknown database": (
            as_user(server.dsn_for("no_such_database"), "postgres", WRONG),
            'database "no_such_database" does not exist',
            {},
        ),
        "unknown user": (
            as_user(faults, "no_such_user", WRONG),
            'role "no_such_user" does not exist',
            {},
        ),
        "unreachable port": (
            f"postgresql://postgres:{quote(WRONG, safe='')}@127.0.0.1:1/faults",
            "cannot connect",
            {"connect_timeout": 2.0},
        ),
        "unmigrated database": (
            as_user(server.dsn_for("unmigrated"), USER, PASSWORD),
            "is not migrated",
            {},
        ),
    }


CASES = (
    "wrong password",
    "unknown database",
    "unknown user",
    "unreachable port",
    "unmigrated database",
)


def assert_no_secret(text: str) -> None:
    for secret in (WRONG, quote(WRONG, safe=""), PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in text, text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("thread_mode", [False, True], ids=["loop", "thread"])
@pytest.mark.parametrize("case", CASES)
async def test_start_up_errors_are_clear_and_redacted(
    password_server: EmbeddedPostgres, case: str, thread_mode: bool
) -> None:
    """start() raises ConfigurationError naming the cause, the password appears in no message,
    repr or log line, and the service stays harmless: recording and close() never raise."""
    dsn, cause, options = cases(password_server)[case]
    svc = ObservabilityService(dsn, flush_interval=0.05, thread_mode=thread_mode, **options)
    with capture_logs() as logs, pytest.raises(ConfigurationError) as raised:
        await svc.start()
    message = str(raised.value)
    assert cause in message, message
    assert "***" in message  # the DSN is named, with its password masked
    assert_no_secret(message)
    assert_no_secret(repr(raised.value))
    assert_no_secret(repr(svc) + repr(svc.config) + repr(svc.postgres))
    ctx = svc.start_trace("after a failed start")
    svc.log_llm_call(ctx, model="m", input_tokens=3)
    svc.end_trace(ctx)
    with capture_logs() as more_logs:
        await svc.close(timeout=1)
    assert_no_secret(repr(logs + more_logs))
    stats = svc.stats()
    assert stats is not None and stats.balances()
    assert stats.written == 0 and stats.dropped_at_close == 3


@pytest.mark.timeout(30)
async def test_the_right_password_starts_and_writes(password_server: EmbeddedPostgres) -> None:
    """The same role with its right password starts and writes (the wrong-password case fails
    for the password, not for anything else)."""
    dsn = as_user(password_server.dsn_for("faults"), USER, PASSWORD)
    svc = ObservabilityService(dsn, flush_interval=0.05)
    with capture_logs() as logs:
        await svc.start()
        svc.log_llm_call(None, model="m", input_tokens=3)
        assert await svc.flush(timeout=10)
        await svc.close()
    stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == 1
    assert_no_secret(repr(logs))
