"""Migration 0004 on a real server: sketches stored, merged in SQL and read back; cost columns.

Runs on whichever server TRACEWRITER_TEST_DSN names: the plain PostgreSQL path (partitions) and,
pointed at a TimescaleDB server, the hypertable path.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections import defaultdict
from decimal import Decimal

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter import _schema as schema
from tracewriter._rollup import histogram_bucket
from tracewriter._sketch import (
    ALPHA,
    GAMMA,
    Sketch,
    bucket_key,
    merge_encoded,
    quantile_of,
    to_sql_text,
)
from tracewriter._sql import Statements

pytestmark = pytest.mark.timeout(120)

UPSERT = Statements.build().metrics_upsert
METRIC_COLUMNS = schema.METRIC_COLUMNS
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
MODELS = ("gpt-4o", "claude-3-5-sonnet", "llama-3-8b")


def encoded(values: list[float]) -> list[int]:
    """The database encoding of a sketch of ``values``."""
    s = Sketch()
    for v in values:
        s.add(v)
    return s.encode()


def exact(values: list[float], q: float) -> float:
    """``percentile_disc(q)`` computed in Python, for the pure checks."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def metric_row(ts: dt.datetime, metric: str, model: str, values: list[float]) -> tuple[object, ...]:
    """One metrics_aggregates row in METRIC_COLUMNS order, built the way the flusher would."""
    sketch = Sketch()
    hist = [0] * schema.HISTOGRAM_BUCKETS
    for v in values:
        sketch.add(v)
        hist[histogram_bucket(v)] += 1
    return (
        str(uuid.uuid4()),
        ts,
        metric,
        "llm",
        model,
        "",
        "ok",
        len(values),
        float(sum(values)),
        float(min(values)),
        float(max(values)),
        to_sql_text(hist),
        to_sql_text(sketch.encode()),
    )


async def upsert(conn: asyncpg.Connection, batch_id: str, rows: list[tuple[object, ...]]) -> None:
    """Run the exactly-once additive upsert for one batch, as the sink would."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    assert len(columns) == len(METRIC_COLUMNS)
    await conn.execute(UPSERT, batch_id, *columns)


async def insert_spans(conn: asyncpg.Connection, spans: list[tuple[object, ...]]) -> None:
    """COPY completed LLM spans: (timestamp, model, duration_ms, input_tokens, output_tokens)."""
    await conn.copy_records_to_table(
        "spans",
        schema_name="observability",
        columns=[
            "id",
            "timestamp",
            "trace_id",
            "span_id",
            "span_type",
            "status",
            "model",
            "duration_ms",
            "input_tokens",
            "output_tokens",
        ],
        records=[
            (uuid.uuid4(), ts, uuid.uuid4().hex, uuid.uuid4().hex[:16], "llm", "ok", *rest)
            for ts, *rest in spans
        ],
    )


async def test_sql_and_python_compute_the_same_buckets_and_quantiles(
    pool: asyncpg.Pool,
) -> None:
    """sketch_of in SQL equals the Python sketch, and sketch_quantile equals Sketch.quantile."""
    rng = random.Random(4)
    values = [rng.lognormvariate(3, 2) for _ in range(2000)] + [0.0, -1.0, 1e-4, 3.6e6, 1e7]
    python = Sketch()
    for v in values:
        python.add(v)
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT observability.sketch_of(v) FROM unnest($1::float8[]) AS v", values
        )
        assert list(stored) == python.encode()
        for q in (0.0, 0.001, 0.5, 0.9, 0.95, 0.99, 1.0):
            sql_q = await conn.fetchval(
                "SELECT observability.sketch_quantile($1::bigint[], $2)", stored, q
            )
            assert sql_q == pytest.approx(python.quantile(q), rel=1e-12), q
        gamma = await conn.fetchval("SELECT observability.sketch_gamma()")
        assert gamma == (1 + ALPHA) / (1 - ALPHA)
        assert await conn.fetchval("SELECT observability.sketch_count($1::bigint[])", stored) == (
            len(values)
        )


async def test_percentiles_of_merged_rows_are_within_two_percent_of_percentile_disc(
    pool: asyncpg.Pool,
) -> None:
    """Log-normal latencies and heavy-tailed token counts, rolled up per minute and model in
    overlapping batches, read back through sketch_merge + sketch_quantile within 2 % of
    percentile_disc over the same spans, overall and per model."""
    rng = random.Random(15)
    spans: list[tuple[object, ...]] = []
    cells: dict[tuple[dt.datetime, str], list[tuple[float, int]]] = defaultdict(list)
    for i in range(9000):
        model = MODELS[i % 3]
        ts = NOW - dt.timedelta(minutes=rng.randrange(30), seconds=rng.randrange(60))
        # log-normal latency around a model-specific median, 0.1 ms .. an hour
        duration = min(max(rng.lognormvariate(7.0 + i % 3, 1.1), 0.1), 3_600_000.0)
        # Pareto input tokens: mostly short prompts, a tail of long-context calls (to 10M)
        tokens = min(int(50 * rng.paretovariate(0.9)), 10_000_000)
        spans.append((ts, model, duration, tokens, rng.randrange(0, 2000)))
        cells[(ts.replace(second=0), model)].append((duration, tokens))

    async with pool.acquire() as conn:
        await insert_spans(conn, spans)
        # Each cell's calls are split over two writers' batches, so every row is hit twice and
        # the ON CONFLICT merge of sketches is what the read-back depends on.
        batches: list[list[tuple[object, ...]]] = [[], []]
        for (minute, model), calls in cells.items():
            half = len(calls) // 2
            for part, batch in ((calls[:half], batches[0]), (calls[half:], batches[1])):
                if part:
                    batch.append(
                        metric_row(minute, "span.duration_ms", model, [d for d, _ in part])
                    )
                    batch.append(
                        metric_row(minute, "llm.input_tokens", model, [float(t) for _, t in part])
                    )
        for batch in batches:
            await upsert(conn, str(uuid.uuid4()), batch)

        for metric, column in (
            ("span.duration_ms", "duration_ms"),
            ("llm.input_tokens", "input_tokens"),
        ):
            for group_by in ("", "model"):
                select_group = f"{group_by}, " if group_by else ""
                group_clause = f"GROUP BY {group_by}" if group_by else ""
                sketched = await conn.fetch(
                    f"SELECT {select_group}"
                    "observability.sketch_quantile(s, 0.5) AS p50, "
                    "observability.sketch_quantile(s, 0.95) AS p95, "
                    "observability.sketch_quantile(s, 0.99) AS p99, n "
                    f"FROM (SELECT {select_group}observability.sketch_merge(sketch) AS s, "
                    "sum(count) AS n "
                    f"FROM observability.metrics_aggregates WHERE metric = $1 {group_clause}) AS m",
                    metric,
                )
                exacts = await conn.fetch(
                    f"SELECT {select_group}"
                    f"percentile_disc(0.5) WITHIN GROUP (ORDER BY {column}) AS p50, "
                    f"percentile_disc(0.95) WITHIN GROUP (ORDER BY {column}) AS p95, "
                    f"percentile_disc(0.99) WITHIN GROUP (ORDER BY {column}) AS p99, "
                    "count(*) AS n "
                    f"FROM observability.spans {group_clause}"
                )
                key = (lambda r: r["model"]) if group_by else (lambda r: "")
                truth = {key(r): r for r in exacts}
                assert len(sketched) == len(truth) == (3 if group_by else 1)
                for row in sketched:
                    want = truth[key(row)]
                    assert row["n"] == want["n"]
                    for p in ("p50", "p95", "p99"):
                        assert abs(row[p] - want[p]) <= 0.02 * want[p], (metric, key(row), p)
                        # and in fact within the sketch's own 1 %
                        assert abs(row[p] - want[p]) <= (ALPHA + 1e-9) * want[p]


async def test_a_retried_batch_is_counted_once_and_a_new_batch_adds(pool: asyncpg.Pool) -> None:
    """The same batch id twice changes nothing; another batch adds its counts to the sketch."""
    rows = [metric_row(NOW, "span.duration_ms", "gpt-4o", [10.0, 20.0, 30.0])]
    batch = str(uuid.uuid4())
    async with pool.acquire() as conn:
        await upsert(conn, batch, rows)
        await upsert(conn, batch, rows)  # the retry after an unacknowledged commit
        stored = await conn.fetchrow("SELECT count, sketch FROM observability.metrics_aggregates")
        assert stored["count"] == 3
        assert list(stored["sketch"]) == encoded([10.0, 20.0, 30.0])

        await upsert(conn, str(uuid.uuid4()), rows)
        stored = await conn.fetchrow(
            "SELECT count, sketch, observability.sketch_count(sketch) AS n "
            "FROM observability.metrics_aggregates"
        )
        assert stored["count"] == stored["n"] == 6
        assert list(stored["sketch"]) == encoded([10.0, 20.0, 30.0] * 2)


async def test_sketch_merge_over_many_rows_equals_the_python_merge(pool: asyncpg.Pool) -> None:
    """1,500 rows (past the aggregate's compaction threshold) and NULLs merge as in Python."""
    rng = random.Random(7)
    sketches = [
        encoded([rng.lognormvariate(5, 2) for _ in range(rng.randrange(1, 12))])
        for _ in range(1500)
    ]
    with_nulls: list[list[int] | None] = [*sketches, None, None]
    rng.shuffle(with_nulls)
    async with pool.acquire() as conn:
        merged = await conn.fetchval(
            "SELECT observability.sketch_merge(s::bigint[]) FROM unnest($1::text[]) AS s",
            [None if s is None else to_sql_text(s) for s in with_nulls],
        )
        assert list(merged) == merge_encoded(*sketches)
        assert (
            await conn.fetchval(
                "SELECT observability.sketch_merge(s) FROM (VALUES (NULL::bigint[])) AS v(s)"
            )
            is None
        )
        assert (
            list(
                await conn.fetchval(
                    "SELECT observability.sketch_add(NULL, $1::bigint[])", sketches[0]
                )
            )
            == sketches[0]
        )
        assert (
            await conn.fetchval("SELECT observability.sketch_quantile('{}'::bigint[], 0.5)") is None
        )
        assert (
            await conn.fetchval(
                "SELECT observability.sketch_quantile($1::bigint[], 'NaN')", sketches[0]
            )
            is None
        )


async def test_a_typical_row_stays_well_under_two_kilobytes(pool: asyncpg.Pool) -> None:
    """A minute of 300 log-normal latencies (σ = 1) stores its sketch in under 2 KB."""
    rng = random.Random(2)
    values = [rng.lognormvariate(7, 1.0) for _ in range(300)]
    async with pool.acquire() as conn:
        await upsert(conn, str(uuid.uuid4()), [metric_row(NOW, "span.duration_ms", "m", values)])
        size = await conn.fetchval(
            "SELECT pg_column_size(sketch) FROM observability.metrics_aggregates"
        )
    assert size < 2048
    bins = Sketch.from_encoded(encoded(values)).bins
    assert quantile_of(bins, 0.5) == pytest.approx(exact(values, 0.5), rel=ALPHA)


async def test_cost_is_stored_exactly_on_spans_and_rolls_up_per_model(pool: asyncpg.Pool) -> None:
    """cost_usd keeps the exact decimal with its price source and version; llm.cost_usd sums."""
    cost = Decimal("0.000123456789012345")
    async with pool.acquire() as conn:
        await conn.execute(
            'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, span_type, '
            "status, model, cost_usd, price_source, price_version) "
            "VALUES ($1, $2, $3, $4, 'llm', 'ok', 'gpt-4o', $5, 'genai-prices', '0.2.3')",
            uuid.uuid4(),
            NOW,
            uuid.uuid4().hex,
            uuid.uuid4().hex[:16],
            cost,
        )
        row = await conn.fetchrow(
            "SELECT cost_usd, price_source, price_version FROM observability.spans"
        )
        assert (row["cost_usd"], row["price_source"], row["price_version"]) == (
            cost,
            "genai-prices",
            "0.2.3",
        )
        await upsert(
            conn,
            str(uuid.uuid4()),
            [
                metric_row(NOW, "llm.cost_usd", "gpt-4o", [0.01, 0.02]),
                metric_row(NOW, "llm.cost_usd", "claude-3-5-sonnet", [0.5]),
            ],
        )
        await upsert(conn, str(uuid.uuid4()), [metric_row(NOW, "llm.cost_usd", "gpt-4o", [0.03])])
        totals = dict(
            await conn.fetch(
                "SELECT model, sum(sum) FROM observability.metrics_aggregates "
                "WHERE metric = 'llm.cost_usd' GROUP BY model"
            )
        )
    assert totals == {"gpt-4o": pytest.approx(0.06), "claude-3-5-sonnet": pytest.approx(0.5)}


async def test_new_partitions_get_the_new_columns(pool: asyncpg.Pool) -> None:
    """Rows far in the future (a partition or chunk made after 0004) carry sketch and cost."""
    future = NOW + dt.timedelta(days=30)
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT observability.partitioning_mode()") == "native":
            await conn.execute("SELECT observability.ensure_partitions(0, 35)")
        await upsert(conn, str(uuid.uuid4()), [metric_row(future, "llm.cost_usd", "m", [1.5])])
        await conn.execute(
            'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, cost_usd) '
            "VALUES ($1, $2, $3, $4, 1.25)",
            uuid.uuid4(),
            future,
            uuid.uuid4().hex,
            uuid.uuid4().hex[:16],
        )
        assert await conn.fetchval(
            "SELECT observability.sketch_quantile(sketch, 0.5) FROM "
            'observability.metrics_aggregates WHERE "timestamp" = $1',
            future,
        ) == pytest.approx(1.5, rel=ALPHA)
        assert await conn.fetchval(
            'SELECT cost_usd FROM observability.spans WHERE "timestamp" = $1', future
        ) == Decimal("1.25")
        if await conn.fetchval("SELECT observability.partitioning_mode()") == "native":
            # not in DEFAULT: the row found a real partition built LIKE the altered parent
            assert (
                await conn.fetchval(
                    "SELECT tableoid::regclass::text FROM observability.spans "
                    'WHERE "timestamp" = $1',
                    future,
                )
                != "observability.spans_default"
            )


def test_every_bucket_edge_in_range_lands_in_the_same_bucket_in_sql_and_python(
    db_dsn: str,
) -> None:
    """GAMMA**k and its neighbouring doubles for 0.1 ms .. 10M (k = -1200..1200): same keys."""
    edge_values = [
        v
        for k in range(-1200, 1201)
        for v in (GAMMA**k, math.nextafter(GAMMA**k, 0), math.nextafter(GAMMA**k, math.inf))
    ]
    with psycopg.connect(db_dsn) as conn:
        keys = conn.execute(
            "SELECT array_agg(observability.sketch_key(v) ORDER BY i) "
            "FROM unnest(%s::float8[]) WITH ORDINALITY AS u(v, i)",
            (edge_values,),
        ).fetchone()
    assert keys is not None
    assert keys[0] == [bucket_key(v) for v in edge_values]


# --- properties, against the server ---------------------------------------------------------------

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
# Values on and next to bucket edges (GAMMA ** k), where a last-bit difference between the
# Python and SQL computations would show, plus zeros, negatives and NaN.
edges = st.integers(-1200, 1200).flatmap(
    lambda k: st.sampled_from(
        [GAMMA**k, math.nextafter(GAMMA**k, 0), math.nextafter(GAMMA**k, math.inf)]
    )
)
values = st.lists(
    st.one_of(
        edges,
        st.floats(min_value=-10, max_value=1e12),
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.integers(0, 10_000_000).map(float),
    ),
    max_size=40,
)


@PROPERTY
@given(st.lists(values, min_size=3, max_size=3))
def test_sql_sketches_equal_python_sketches_and_merge_associatively(
    db_dsn: str, parts: list[list[float]]
) -> None:
    """sketch_of in SQL equals the Python sketch value for value (edges included), and
    sketch_add is associative and commutative with the Python merge as its result."""
    a, b, c = (encoded(p) for p in parts)
    with psycopg.connect(db_dsn) as conn:
        for part, mine in zip(parts, (a, b, c), strict=True):
            row = conn.execute(
                "SELECT observability.sketch_of(v) FROM unnest(%s::float8[]) AS v", (part,)
            ).fetchone()
            assert row is not None
            assert (row[0] or []) == mine
        row = conn.execute(
            "SELECT observability.sketch_add(observability.sketch_add(%(a)s::bigint[], "
            "%(b)s::bigint[]), %(c)s::bigint[]), "
            "observability.sketch_add(%(a)s::bigint[], observability.sketch_add(%(b)s::bigint[], "
            "%(c)s::bigint[])), "
            "observability.sketch_add(%(c)s::bigint[], observability.sketch_add(%(b)s::bigint[], "
            "%(a)s::bigint[]))",
            {"a": a, "b": b, "c": c},
        ).fetchone()
    assert row is not None
    assert row[0] == row[1] == row[2] == merge_encoded(a, b, c)
