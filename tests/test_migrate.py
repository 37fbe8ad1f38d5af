"""Applying, rolling back and listing migrations, from Python, the command line and a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import _citus
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tracewriter import cli
from tracewriter._native import MODULES
from tracewriter.errors import ConfigurationError
from tracewriter.migrate import (
    apply_migrations,
    list_migrations,
    migration_ids,
    migrations_dir,
    rollback_migrations,
)

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = migration_ids()  # each depends on the one before it
NEWEST = MIGRATIONS[-1]
SECRET = "s3cret-pa55word"


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def admin(server_dsn: str, sql: str) -> None:
    """Run one statement outside a transaction on the server's maintenance database."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql)


def schema_exists(dsn: str) -> bool:
    """Whether the observability schema exists in the database at ``dsn``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'observability')"
        ).fetchone()
    assert row is not None
    return bool(row[0])


def tables(dsn: str) -> set[str]:
    """The tables (not partitions) in the observability schema of ``dsn``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'observability'::regnamespace "
            "AND relkind IN ('r', 'p') AND NOT relispartition"
        ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def empty_db(server_dsn: str) -> Iterator[str]:
    """A freshly created, empty (unmigrated) database, dropped afterwards."""
    name = f"tw_migrate_{uuid.uuid4().hex[:12]}"
    admin(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_files_are_found_in_the_source_checkout() -> None:
    """From a checkout the files come from the repository's sql/, each with its rollback."""
    found = migrations_dir()
    assert found == REPO / "sql"
    for migration in MIGRATIONS:
        assert (found / f"{migration}.sql").is_file()
        assert (found / f"{migration}.rollback.sql").is_file()


def test_apply_rollback_and_reapply_round_trip(empty_db: str) -> None:
    """Apply runs all in order, re-apply nothing; rollback removes the schema; apply works again."""
    assert list_migrations(empty_db) == [(m, False) for m in MIGRATIONS]

    assert apply_migrations(empty_db) == MIGRATIONS
    assert list_migrations(empty_db) == [(m, True) for m in MIGRATIONS]
    assert apply_migrations(empty_db) == []

    assert rollback_migrations(empty_db) == list(reversed(MIGRATIONS))
    assert not schema_exists(empty_db)
    assert list_migrations(empty_db) == [(m, False) for m in MIGRATIONS]
    assert rollback_migrations(empty_db) == []

    assert apply_migrations(empty_db) == MIGRATIONS
    assert "traces" in tables(empty_db)


def test_rollback_count_rolls_back_only_the_newest(empty_db: str) -> None:
    """count=1 rolls back the newest migration and leaves the older ones applied."""
    apply_migrations(empty_db)
    assert rollback_migrations(empty_db, count=1) == [NEWEST]
    assert list_migrations(empty_db) == [(m, m != NEWEST) for m in MIGRATIONS]
    assert schema_exists(empty_db)
    assert rollback_migrations(empty_db, count=0) == []
    assert apply_migrations(empty_db) == [NEWEST]


def test_rolling_back_the_sketch_derives_histograms_and_drops_the_new_columns(
    empty_db: str,
) -> None:
    """A row with only a sketch gets a √2 histogram from it when 0004 is rolled back."""
    apply_migrations(empty_db)
    with psycopg.connect(empty_db) as conn:
        conn.execute(
            "INSERT INTO observability.metrics_aggregates "
            '(id, "timestamp", metric, count, sum, sketch) '
            "SELECT gen_random_uuid(), date_trunc('minute', now()), 'span.duration_ms', 4, 1006.5, "
            "observability.sketch_of(v) FROM unnest(ARRAY[0.5, 3, 3, 1000]::float8[]) AS v"
        )
    sketch_and_after = MIGRATIONS[MIGRATIONS.index("0004.sketch") :]
    assert rollback_migrations(empty_db, count=len(sketch_and_after)) == sketch_and_after[::-1]
    with psycopg.connect(empty_db) as conn:
        row = conn.execute("SELECT histogram FROM observability.metrics_aggregates").fetchone()
        columns = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
            "'observability' AND column_name IN ('sketch', 'cost_usd', 'price_source')"
        ).fetchone()
    assert row is not None
    # 0.5 below 1 in bucket 0; 3 in [2^1.5, 2^2) = bucket 4; 1000 in [2^9.5, 2^10) = bucket 20
    assert row[0] == [1, 0, 0, 0, 2] + [0] * 15 + [1] + [0] * 19
    assert columns == (0,)
    assert apply_migrations(empty_db) == sketch_and_after


@pytest.fixture
def own_db(server_dsn: str) -> Iterator[str]:
    """An empty database of this test's own (distributed on a Citus cluster), dropped after."""
    name = f"tw_migrate_{uuid.uuid4().hex[:12]}"
    try:
        yield _citus.create_database(server_dsn, name)
    finally:
        _citus.drop_database(server_dsn, name)


def test_trace_keys_give_rows_without_a_trace_their_own_row_id(own_db: str) -> None:
    """0005 keys the trace tables by (trace_id, id, timestamp) after giving every chat message
    and document event stored without a trace id its row id in hex, so that none is refused by
    the key (or, on Citus, by the distribution)."""
    apply_migrations(own_db)
    after = MIGRATIONS[MIGRATIONS.index("0005.trace_keys") :]
    assert rollback_migrations(own_db, count=len(after)) == after[::-1]
    with psycopg.connect(own_db) as conn:
        conn.execute(
            'INSERT INTO observability.chat_messages (id, "timestamp", role, content, '
            "content_preview) VALUES (gen_random_uuid(), now(), 'user', 'c', 'c')"
        )
        conn.execute(
            'INSERT INTO observability.document_events (id, "timestamp", kb_id, document_id, '
            "event_type, status) VALUES (gen_random_uuid(), now(), 'kb', 'd', 'embed', 'ok')"
        )
    assert apply_migrations(own_db) == after
    with psycopg.connect(own_db) as conn:
        rows = conn.execute(
            "SELECT trace_id = replace(id::text, '-', '') FROM observability.chat_messages "
            "UNION ALL "
            "SELECT trace_id = replace(id::text, '-', '') FROM observability.document_events"
        ).fetchall()
    assert rows == [(True,), (True,)]


def test_rollback_refuses_a_negative_count(db_dsn: str) -> None:
    """A negative count is a configuration error, raised before touching the database."""
    with pytest.raises(ConfigurationError, match="count"):
        rollback_migrations(db_dsn, count=-1)


def dsn_forms(dsn: str) -> dict[str, str]:
    """The same database written the ways users write DSNs."""
    params = conninfo_to_dict(dsn)
    forms = {
        "uri": dsn,
        "key_value": make_conninfo(**params),
        "yoyo_scheme": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
    }
    host = str(params.get("host", ""))
    if host.startswith("/"):
        # The socket directory percent-encoded in the authority, as libpq also accepts.
        forms["socket_in_authority"] = (
            f"postgresql://{params['user']}@{quote(host, safe='')}/{params['dbname']}"
        )
    else:
        forms["socket_query_form"] = (
            f"postgresql://{params.get('user', 'postgres')}@/{params['dbname']}"
            f"?host={host}&port={params.get('port', 5432)}"
        )
    return forms


@pytest.mark.parametrize("form", ["uri", "key_value", "yoyo_scheme", "alternate"])
def test_every_dsn_form_users_write_is_accepted(db_dsn: str, form: str) -> None:
    """URIs, key=value strings, yoyo-style schemes and socket/host variants all reach the server."""
    forms = dsn_forms(db_dsn)
    if form == "alternate":
        form = next(k for k in forms if k.startswith("socket_"))
    assert list_migrations(forms[form]) == [(m, True) for m in MIGRATIONS]


def test_unreachable_server_raises_configuration_error_without_password() -> None:
    """A server that is not listening gives a ConfigurationError naming it, password redacted."""
    dsn = f"postgresql://someone:{SECRET}@127.0.0.1:1/nowhere"
    with pytest.raises(ConfigurationError) as caught:
        apply_migrations(dsn)
    message = str(caught.value)
    assert "cannot connect" in message
    assert "127.0.0.1:1" in message
    assert SECRET not in message
    assert "\n" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_unknown_role_raises_configuration_error_without_password(server_dsn: str) -> None:
    """A role the server does not know is refused at connect, password redacted everywhere."""
    parts = urlsplit(server_dsn)
    host = parts.netloc.rpartition("@")[2]
    role = f"tw_nobody_{uuid.uuid4().hex[:8]}"
    dsn = urlunsplit(parts._replace(netloc=f"{role}:{SECRET}@{host}"))
    with pytest.raises(ConfigurationError) as caught:
        list_migrations(dsn)
    assert role in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_unknown_database_raises_configuration_error(server_dsn: str) -> None:
    """A database that does not exist is a ConfigurationError that names it."""
    name = f"tw_missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigurationError, match=name):
        apply_migrations(with_database(server_dsn, name))


def test_malformed_dsn_raises_configuration_error() -> None:
    """A DSN libpq cannot parse is a ConfigurationError, password redacted."""
    with pytest.raises(ConfigurationError, match="invalid DSN") as caught:
        apply_migrations(f"host=localhost password={SECRET} no_such_option=1")
    assert SECRET not in str(caught.value)


def test_a_failing_migration_names_itself_and_leaves_nothing_half_done(
    empty_db: str,
) -> None:
    """A migration failing after its first statements is named, and its transaction undone."""
    # Asking for a partitioning that no server has fails in 0001's second statement, after
    # CREATE SCHEMA has run (on every server, with or without TimescaleDB).
    params = conninfo_to_dict(empty_db)
    failing = make_conninfo(**params, options="-c tracewriter.partitioning=cassandra")
    with pytest.raises(ConfigurationError, match=r"migration 0001\.schema failed") as caught:
        apply_migrations(failing)
    assert "tracewriter.partitioning" in str(caught.value)
    assert not schema_exists(empty_db)
    assert list_migrations(empty_db) == [(m, False) for m in MIGRATIONS]

    forced = make_conninfo(**params, options="-c tracewriter.partitioning=native")
    assert apply_migrations(forced) == MIGRATIONS


def test_notices_from_the_migrations_reach_the_caller(db_dsn: str, empty_db: str) -> None:
    """Rolling back the roles while another database still uses them reports that they were kept."""
    apply_migrations(empty_db)
    notices: list[str] = []
    roles_and_after = MIGRATIONS[MIGRATIONS.index("0002.roles") :]
    rollback_migrations(empty_db, count=len(roles_and_after), on_notice=notices.append)
    # db_dsn's database holds grants to both roles, so neither may be dropped.
    assert any("tracewriter_writer kept" in n for n in notices), notices
    assert any("tracewriter_reader kept" in n for n in notices), notices
    with psycopg.connect(empty_db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('tracewriter_writer', "
            "'tracewriter_reader')"
        ).fetchone()
    assert row == (2,)


# --- command line ---------------------------------------------------------------------------------


def test_cli_migrates_lists_and_rolls_back(
    empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter migrate` applies, --list shows the state, --rollback --count undoes."""
    assert cli.main(["migrate", "--dsn", empty_db]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {m}" for m in MIGRATIONS]

    assert cli.main(["migrate", "--dsn", empty_db]) == 0
    assert "up to date" in capsys.readouterr().out

    assert cli.main(["migrate", "--dsn", empty_db, "--rollback", "--count", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"rolled back {NEWEST}"]

    assert cli.main(["migrate", "--dsn", empty_db, "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"[{' ' if m == NEWEST else 'x'}] {m}" for m in MIGRATIONS
    ]

    assert cli.main(["migrate", "--dsn", empty_db, "--rollback"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"rolled back {m}" for m in reversed(MIGRATIONS[:-1])
    ]
    assert not schema_exists(empty_db)


def test_cli_reads_the_dsn_from_the_environment(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --dsn, TRACEWRITER_DSN names the database."""
    monkeypatch.setenv("TRACEWRITER_DSN", db_dsn)
    assert cli.main(["migrate", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"[x] {m}" for m in MIGRATIONS]


def test_cli_without_a_dsn_exits_2_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --dsn and no TRACEWRITER_DSN is a usage error (exit 2) saying how to give one."""
    monkeypatch.delenv("TRACEWRITER_DSN", raising=False)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "--dsn" in err
    assert "TRACEWRITER_DSN" in err


def test_cli_count_without_rollback_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--count means nothing without --rollback, and says so with exit status 2."""
    assert cli.main(["migrate", "--dsn", "postgresql://x@/y", "--count", "1"]) == 2
    assert "--rollback" in capsys.readouterr().err


def test_cli_refuses_rollback_and_list_together() -> None:
    """--rollback and --list are mutually exclusive (argparse's usage error, exit 2)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["migrate", "--rollback", "--list"])
    assert caught.value.code == 2


def test_cli_connection_failure_is_one_line_without_traceback_or_password() -> None:
    """The installed console script reports a failure on one stderr line and exits 1."""
    script = Path(sys.executable).with_name("tracewriter")
    result = subprocess.run(
        [str(script), "migrate", "--dsn", f"postgresql://u:{SECRET}@127.0.0.1:1/db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tracewriter migrate: cannot connect")
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


# --- installed wheel ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def build_wheel(tmp_path: Path, **env: str) -> tuple[Path, set[str]]:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=400,
        env={**os.environ, **env},
    )
    (wheel,) = dist.glob("tracewriter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return wheel, set(archive.namelist())


def has_c_compiler() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None


# Run by the wheel's own Python: record a trace through the installed package and say whether
# it ran compiled and what it wrote.
WRITE_THROUGH_THE_WHEEL = """
import asyncio, sys, tracewriter

async def main():
    svc = tracewriter.ObservabilityService(sys.argv[1], flush_interval=0.05)
    await svc.start()
    ctx = svc.start_trace("wheel", metadata={"k": 1})
    with svc.span(ctx, "step", "chain"):
        svc.log_llm_call(ctx, model="gpt-4o", input_tokens=10, output_tokens=5)
    svc.end_trace(ctx)
    assert await svc.flush(timeout=30)
    stats = svc.stats()
    await svc.close()
    print(tracewriter.native(), stats.written, stats.rejected_invalid)

asyncio.run(main())
"""


@pytest.mark.slow
def test_installed_wheel_migrates_a_fresh_database(empty_db: str, tmp_path: Path) -> None:
    """A wheel built from this tree, installed in a fresh venv, finds its SQL, migrates, and
    writes — compiled where this machine has a C compiler, as Python where it has none."""
    wheel, names = build_wheel(tmp_path)
    compiled = {n for n in names if n.endswith(".so")}
    if has_c_compiler():
        assert not wheel.name.endswith("-py3-none-any.whl"), wheel.name
        assert {n.split(".")[0].replace("/", ".") for n in compiled} == {
            *MODULES,
            "tracewriter__mypyc",
        }
    else:
        assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
        assert compiled == set()
    for migration in MIGRATIONS:
        assert f"tracewriter/sql/{migration}.sql" in names
        assert f"tracewriter/sql/{migration}.rollback.sql" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    where = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import tracewriter.migrate as m; print(m.migrations_dir())",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where

    def run_installed(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False
        )

    result = run_installed(str(bin_dir / "tracewriter"), "migrate", "--dsn", empty_db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"applied {m}" for m in MIGRATIONS]
    assert tables(empty_db) == {
        "traces",
        "spans",
        "chat_messages",
        "document_events",
        "metrics_aggregates",
        "provider_sync_status",
        "dead_letters",
        "applied_batches",
    }

    wrote = run_installed(str(bin_dir / "python"), "-c", WRITE_THROUGH_THE_WHEEL, empty_db)
    assert wrote.returncode == 0, wrote.stderr
    # five events written (the trace's start and end, the span's, the LLM call), none refused;
    # the lines before the last are the writer's own log
    assert wrote.stdout.splitlines()[-1].split() == [str(has_c_compiler()), "5", "0"]


@pytest.mark.slow
def test_pure_python_wheel_on_request(tmp_path: Path) -> None:
    """TRACEWRITER_PURE_PYTHON=1 builds the wheel any platform installs: no extension in it."""
    wheel, names = build_wheel(tmp_path, TRACEWRITER_PURE_PYTHON="1")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert not any(n.endswith(".so") for n in names)
    assert "tracewriter/_records.py" in names
