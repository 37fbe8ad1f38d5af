"""Unit tests of tracewriter._config: WriterConfig, TRACEWRITER_* parsing, DSN redaction."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tracewriter._config import WriterConfig, redact_dsn, redact_text
from tracewriter.errors import ConfigurationError

FIELDS = [f.name for f in dataclasses.fields(WriterConfig)]
passwords = st.text(st.characters(exclude_categories=["Cs"]), min_size=4, max_size=30).filter(
    lambda p: p.strip() == p
)


def _kv_quote(value: str) -> str:
    """Quote ``value`` as libpq does in a key=value connection string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- defaults and construction -----------------------------------------------------------------


def test_defaults_are_valid() -> None:
    """The default configuration passes validation and has the documented values."""
    config = WriterConfig()
    config.validate()
    assert config.dsn is None
    assert config.flush_interval == 1.0
    assert config.max_batch_rows == 5000
    assert config.max_buffer_rows == 100_000
    assert config.pool_size == 2
    assert config.thread_mode is False
    assert config.pgbouncer is False


def test_fields_are_keyword_only_and_frozen() -> None:
    """Positional arguments are refused and a built config cannot be changed."""
    with pytest.raises(TypeError):
        WriterConfig("postgresql://h/db")  # type: ignore[call-arg]
    config = WriterConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool_size = 9  # type: ignore[misc]


def test_env_var_names() -> None:
    """Each field is read from TRACEWRITER_<FIELD_UPPER>."""
    assert WriterConfig.env_var("flush_interval") == "TRACEWRITER_FLUSH_INTERVAL"
    assert WriterConfig.env_var("dsn") == "TRACEWRITER_DSN"


# --- from_env ----------------------------------------------------------------------------------


def test_from_env_empty_gives_defaults() -> None:
    """No variables and no overrides give the default configuration."""
    assert WriterConfig.from_env({}) == WriterConfig()


def test_from_env_reads_every_field_type() -> None:
    """Strings, DSNs, floats, integers and booleans are all parsed from the environment."""
    env = {
        "TRACEWRITER_DSN": " postgresql://app:pw@db/app ",
        "TRACEWRITER_FLUSH_INTERVAL": "0.25",
        "TRACEWRITER_MAX_BATCH_ROWS": "100",
        "TRACEWRITER_MAX_BUFFER_ROWS": "1_000",
        "TRACEWRITER_POOL_SIZE": " 3 ",
        "TRACEWRITER_OPEN_ROW_GRACE": "0",
        "TRACEWRITER_THREAD_MODE": "yes",
        "TRACEWRITER_PGBOUNCER": "On",
        "TRACEWRITER_CONNECT_TIMEOUT": "3",
        "TRACEWRITER_COMMAND_TIMEOUT": "1e1",
        "TRACEWRITER_RETRY_INITIAL_BACKOFF": "0.05",
        "TRACEWRITER_RETRY_MAX_BACKOFF": "2",
        "TRACEWRITER_CLOSE_TIMEOUT": "1.5",
        "TRACEWRITER_ATEXIT_TIMEOUT": "0",
        "TRACEWRITER_PARTITION_CHECK_INTERVAL": "60",
        "TRACEWRITER_PROVIDER_NAME": "pg-main",
        "TRACEWRITER_COPY_YIELD_ROWS": "64",
        "TRACEWRITER_DEAD_LETTER_MAX_CHARS": "2000",
        "TRACEWRITER_REDACT": "email, jwt",
        "TRACEWRITER_CAPTURE_CONTENT": "preview",
        "TRACEWRITER_SAMPLE_RATE": "0.25",
        "TRACEWRITER_SAMPLE_FOLLOW_PARENT": "off",
        "TRACEWRITER_PRICE_CALLS": "off",
        "TRACEWRITER_PRICES": '{"my-llm": {"input": 0.5, "output": "1.5"}}',
    }
    assert set(env) == {WriterConfig.env_var(name) for name in FIELDS}
    config = WriterConfig.from_env(env)
    assert config == WriterConfig(
        dsn="postgresql://app:pw@db/app",
        flush_interval=0.25,
        max_batch_rows=100,
        max_buffer_rows=1000,
        pool_size=3,
        open_row_grace=0.0,
        thread_mode=True,
        pgbouncer=True,
        connect_timeout=3.0,
        command_timeout=10.0,
        retry_initial_backoff=0.05,
        retry_max_backoff=2.0,
        close_timeout=1.5,
        atexit_timeout=0.0,
        partition_check_interval=60.0,
        provider_name="pg-main",
        copy_yield_rows=64,
        dead_letter_max_chars=2000,
        redact="email, jwt",
        capture_content="preview",
        sample_rate=0.25,
        sample_follow_parent=False,
        price_calls=False,
        prices={"my-llm": {"input": 0.5, "output": "1.5"}},
    )
    assert isinstance(config.max_batch_rows, int)
    assert isinstance(config.flush_interval, float)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        ("FALSE", False),
        ("Yes", True),
        ("no", False),
        ("on", True),
        ("OFF", False),
        (" true\n", True),
    ],
)
def test_from_env_boolean_spellings(raw: str, expected: bool) -> None:
    """Booleans accept 1/0, true/false, yes/no and on/off in any case."""
    assert WriterConfig.from_env({"TRACEWRITER_THREAD_MODE": raw}).thread_mode is expected


def test_from_env_blank_variable_counts_as_unset() -> None:
    """An empty or blank variable leaves the default in place."""
    config = WriterConfig.from_env({"TRACEWRITER_DSN": "", "TRACEWRITER_POOL_SIZE": "  "})
    assert config == WriterConfig()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is read."""
    monkeypatch.setenv("TRACEWRITER_POOL_SIZE", "7")
    assert WriterConfig.from_env().pool_size == 7


def test_overrides_win_over_env() -> None:
    """Keyword overrides replace what the environment says."""
    env = {"TRACEWRITER_POOL_SIZE": "7", "TRACEWRITER_DSN": "postgresql://env/db"}
    config = WriterConfig.from_env(env, pool_size=3, dsn="postgresql://kw/db")
    assert config.pool_size == 3
    assert config.dsn == "postgresql://kw/db"


def test_none_override_means_not_given() -> None:
    """An override of None leaves the environment's (or the default) value."""
    env = {"TRACEWRITER_POOL_SIZE": "7"}
    config = WriterConfig.from_env(env, pool_size=None, dsn=None, flush_interval=None)
    assert config.pool_size == 7
    assert config.dsn is None
    assert config.flush_interval == 1.0


def test_override_replaces_an_invalid_env_value() -> None:
    """A variable that would not parse is not read when an override names the same setting."""
    config = WriterConfig.from_env({"TRACEWRITER_POOL_SIZE": "many"}, pool_size=2)
    assert config.pool_size == 2


def test_unknown_override_is_rejected_by_name() -> None:
    """Unknown keyword overrides raise ConfigurationError naming each of them."""
    with pytest.raises(ConfigurationError) as info:
        WriterConfig.from_env({}, flush_intervall=2.0, poolsize=3)
    assert "'flush_intervall'" in str(info.value)
    assert "'poolsize'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("flush_interval", "abc"),
        ("flush_interval", "0"),
        ("flush_interval", "-1"),
        ("flush_interval", "nan"),
        ("flush_interval", "inf"),
        ("max_batch_rows", "1.5"),
        ("max_batch_rows", "0"),
        ("max_buffer_rows", "lots"),
        ("pool_size", "0"),
        ("pool_size", "two"),
        ("open_row_grace", "-0.1"),
        ("thread_mode", "maybe"),
        ("thread_mode", "2"),
        ("pgbouncer", "enabled"),
        ("connect_timeout", "0"),
        ("command_timeout", "-5"),
        ("retry_initial_backoff", "0"),
        ("retry_max_backoff", "soon"),
        ("close_timeout", "-1"),
        ("atexit_timeout", "x"),
        ("partition_check_interval", "0"),
        ("provider_name", "\t"),
        ("copy_yield_rows", "0"),
        ("dead_letter_max_chars", "-1"),
        ("dsn", "mysql://u:p@h/db"),
        ("dsn", "just a hostname"),
    ],
)
def test_invalid_env_value_names_setting_and_variable(name: str, raw: str) -> None:
    """A bad variable raises ConfigurationError naming both the setting and the variable."""
    if name == "provider_name":  # a blank variable counts as unset; test the override path
        with pytest.raises(ConfigurationError, match="provider_name"):
            WriterConfig.from_env({}, provider_name=raw)
        return
    var = WriterConfig.env_var(name)
    with pytest.raises(ConfigurationError) as info:
        WriterConfig.from_env({var: raw})
    message = str(info.value)
    assert message.startswith(f"{var} ({name}): expected ")
    if name != "dsn":
        assert message.endswith(f", got {raw!r}")


def test_env_error_message_matches_documented_shape() -> None:
    """The message says what was expected and shows what was given."""
    with pytest.raises(ConfigurationError) as info:
        WriterConfig.from_env({"TRACEWRITER_FLUSH_INTERVAL": "abc"})
    assert str(info.value) == (
        "TRACEWRITER_FLUSH_INTERVAL (flush_interval): expected a number of seconds > 0, got 'abc'"
    )


def test_cross_field_errors_name_the_variable() -> None:
    """A buffer smaller than a batch, read from the environment, names that variable."""
    with pytest.raises(ConfigurationError, match=r"^TRACEWRITER_MAX_BUFFER_ROWS \(max_buffer"):
        WriterConfig.from_env({"TRACEWRITER_MAX_BUFFER_ROWS": "10"})


# --- validate on a directly built config -------------------------------------------------------

INVALID_VALUES: list[tuple[str, Any]] = [
    ("dsn", ""),
    ("dsn", "mysql://u@h/db"),
    ("dsn", b"postgresql://h/db"),
    ("flush_interval", 0),
    ("flush_interval", -1.0),
    ("flush_interval", "1"),
    ("flush_interval", True),
    ("flush_interval", float("nan")),
    ("max_batch_rows", 0),
    ("max_batch_rows", 10.0),
    ("max_batch_rows", True),
    ("max_buffer_rows", -1),
    ("pool_size", 0),
    ("open_row_grace", -1),
    ("thread_mode", 1),
    ("thread_mode", "true"),
    ("pgbouncer", None),
    ("connect_timeout", 0),
    ("command_timeout", float("inf")),
    ("retry_initial_backoff", 0),
    ("retry_max_backoff", -1),
    ("close_timeout", -0.5),
    ("atexit_timeout", None),
    ("partition_check_interval", 0),
    ("provider_name", ""),
    ("provider_name", 5),
    ("copy_yield_rows", 0),
    ("dead_letter_max_chars", 0),
    ("redact", "email,phone"),
    ("redact", 5),
    ("redact", [lambda f, t: t, lambda f, t: t]),
    ("capture_content", "everything"),
    ("capture_content", None),
    ("sample_rate", 1.5),
    ("sample_rate", -0.1),
    ("sample_rate", "0.5"),
    ("sample_follow_parent", "yes"),
    ("price_calls", "yes"),
    ("prices", {"m": {"input": -1, "output": 1}}),
    ("prices", {"m": {"output": 1}}),
    ("prices", ["not", "a", "mapping"]),
]


@pytest.mark.parametrize(("name", "value"), INVALID_VALUES)
def test_validate_names_each_invalid_setting(name: str, value: Any) -> None:
    """validate() raises ConfigurationError whose message starts with the bad setting's name."""
    config = WriterConfig(**{name: value})
    with pytest.raises(ConfigurationError, match=rf"^{name}: expected "):
        config.validate()
    if value is not None:  # for from_env, an override of None means "not given"
        with pytest.raises(ConfigurationError, match=rf"^{name}: expected "):
            WriterConfig.from_env({}, **{name: value})


def test_every_setting_has_an_invalid_case() -> None:
    """The table above covers every field of WriterConfig."""
    assert {name for name, _ in INVALID_VALUES} == set(FIELDS)


def test_buffer_must_hold_a_batch() -> None:
    """max_buffer_rows smaller than max_batch_rows is refused, naming max_buffer_rows."""
    with pytest.raises(ConfigurationError, match=r"^max_buffer_rows: .*max_batch_rows \(500\)"):
        WriterConfig(max_batch_rows=500, max_buffer_rows=499).validate()
    WriterConfig(max_batch_rows=500, max_buffer_rows=500).validate()


def test_initial_backoff_must_not_exceed_max() -> None:
    """retry_initial_backoff above retry_max_backoff is refused, naming the initial backoff."""
    with pytest.raises(ConfigurationError, match=r"^retry_initial_backoff: "):
        WriterConfig(retry_initial_backoff=2.0, retry_max_backoff=1.0).validate()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@h:5432/db",
        "postgres://h/db",
        "POSTGRESQL://h/db",
        "postgresql://",
        "host=localhost dbname=app user=app",
        "dbname = app",
    ],
)
def test_accepted_dsn_forms(dsn: str) -> None:
    """URI (postgresql:// or postgres://) and libpq key=value DSNs pass validation."""
    WriterConfig(dsn=dsn).validate()


def test_ints_accepted_for_float_settings() -> None:
    """An int where seconds are expected is fine."""
    WriterConfig(flush_interval=2, close_timeout=0, retry_max_backoff=10).validate()


def test_invalid_dsn_error_hides_password() -> None:
    """The error for a malformed DSN shows it redacted."""
    with pytest.raises(ConfigurationError) as info:
        WriterConfig(dsn="mysql://app:hunter2secret@h/db").validate()
    assert "hunter2secret" not in str(info.value)
    assert "mysql://app:***@h/db" in str(info.value)


# --- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (None, None),
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgres://u:secret@h:5432,h2:5433/db", "postgres://u:***@h:5432,h2:5433/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss/w?rd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://h/db?password=secret", "postgresql://h/db?password=***"),
        (
            "postgresql://h/db?sslmode=require&password=secret&application_name=x",
            "postgresql://h/db?sslmode=require&password=***&application_name=x",
        ),
        ("postgresql://h/db?password=sec&ret", "postgresql://h/db?password=***"),
        ("host=h password=secret dbname=db", "host=h password=*** dbname=db"),
        ("host=h password = secret dbname=db", "host=h password = *** dbname=db"),
        ("host=h password='se cret' dbname=db", "host=h password=*** dbname=db"),
        (r"host=h password='it\'s \\ ok' dbname=db", "host=h password=*** dbname=db"),
        (r"host=h password=a\ b dbname=db", "host=h password=*** dbname=db"),
        ("host=h password='unterminated dbname=db", "host=h password=***"),
        ("host=h passwordx=visible", "host=h passwordx=visible"),
        ("", ""),
        ("@@::", "@@::"),
        ("x://:@", "x://:***@"),
        ("://:@", "://:@"),
    ],
)
def test_redact_dsn(dsn: str | None, expected: str | None) -> None:
    """redact_dsn replaces the password in URI, query and key=value forms and keeps the rest."""
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize("garbage", [b"postgresql://u:p@h", 42, object(), ["a"]])
def test_redact_dsn_never_raises(garbage: object) -> None:
    """A value that is not a string gives a placeholder instead of an exception."""
    assert redact_dsn(garbage) == "<not a DSN string>"  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(password=passwords, encode=st.booleans())
# Found by a clean CI run: "user" is part of the user name, so it shows in any repr. The
# template must be the same DSN with the password slot empty, not with every match removed.
@example(password="user", encode=False)
def test_uri_password_never_in_repr(password: str, encode: bool) -> None:
    """repr and str of a config with a URI DSN never contain the password, raw or encoded."""
    written = quote(password, safe="") if encode else password

    def uri(secret: str) -> str:
        return f"postgresql://app_user:{secret}@db.internal:5432/app?sslmode=prefer"

    dsn = uri(written)
    template = repr(WriterConfig(dsn=uri("")))
    assume(password not in template and written not in template)
    config = WriterConfig(dsn=dsn)
    for text in (repr(config), str(config), f"{config}", repr(redact_dsn(dsn))):
        assert password not in text
        assert written not in text


@settings(max_examples=300, deadline=None)
@given(password=passwords)
def test_uri_query_password_never_in_repr(password: str) -> None:
    """A password given as a percent-encoded ?password= parameter never shows in a repr."""
    written = quote(password, safe="")

    def uri(secret: str) -> str:
        return f"postgresql://db.internal/app?password={secret}&sslmode=prefer"

    dsn = uri(written)
    template = repr(WriterConfig(dsn=uri("")))
    assume(password not in template and written not in template)
    text = repr(WriterConfig(dsn=dsn))
    assert password not in text
    assert written not in text


@settings(max_examples=300, deadline=None)
@given(password=passwords, quoted=st.booleans())
def test_keyvalue_password_never_in_repr(password: str, quoted: bool) -> None:
    """repr of a config with a libpq key=value DSN never contains the password."""
    plain = not any(c.isspace() or c in "'\\" for c in password)
    written = _kv_quote(password) if quoted or not plain else password
    dsn = f"host=db.internal port=5432 password={written} dbname=app user=app_user"
    template = repr(
        WriterConfig(dsn="host=db.internal port=5432 password= dbname=app user=app_user")
    )
    assume(password not in template and written not in template)
    config = WriterConfig(dsn=dsn)
    for text in (repr(config), str(config)):
        assert password not in text
        assert written not in text


@settings(max_examples=200, deadline=None)
@given(password=passwords, form=st.sampled_from(["uri", "uri-encoded", "keyvalue"]))
@example(password="pass", form="uri")  # the fixed words of the message contain it: assumed away
def test_redact_text_removes_password(password: str, form: str) -> None:
    """A driver message quoting the DSN or the bare password comes back without the password."""

    def message_for(secret: str) -> tuple[str, str]:
        if form == "uri":
            dsn = f"postgresql://app_user:{secret}@db.internal/app"
        elif form == "uri-encoded":
            dsn = f"postgresql://app_user:{quote(secret, safe='')}@db.internal/app"
        else:
            dsn = f"host=db.internal password={_kv_quote(secret)} dbname=app"
        return dsn, f'connection to {dsn} failed: password "{secret}" rejected'

    # A password that the message's fixed words contain cannot be told apart from them.
    assume(password not in message_for("")[1])
    dsn, message = message_for(password)
    redacted = redact_text(message, dsn)
    assert password not in redacted
    assert "failed: password" in redacted


def test_redact_text_examples() -> None:
    """redact_text replaces the DSN by its redacted form and the bare password by ***."""
    dsn = "postgresql://app:s3cr%40t@db/app"
    text = f"cannot connect to {dsn}: password authentication failed (password s3cr@t)"
    assert redact_text(text, dsn) == (
        "cannot connect to postgresql://app:***@db/app: "
        "password authentication failed (password ***)"
    )
    assert redact_text("nothing secret here", dsn) == "nothing secret here"
    assert redact_text("no dsn configured", None) == "no dsn configured"
    assert redact_text("dsn without password", "postgresql://h/db") == "dsn without password"


def test_redact_text_never_raises() -> None:
    """Non-string input gives a placeholder rather than an exception."""
    assert redact_text(None, "postgresql://u:p@h/db").startswith("<redacted")  # type: ignore[arg-type]
    assert redact_text("text", 42) == "text"  # type: ignore[arg-type]
