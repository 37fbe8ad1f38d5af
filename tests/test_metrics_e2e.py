"""Issue 15 end to end: LLM calls through the writer, percentiles and cost read back in SQL."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal

import asyncpg
import pytest

from tracewriter import ObservabilityService
from tracewriter.cli import main

pytestmark = pytest.mark.timeout(180)

genai_prices = pytest.importorskip("genai_prices")  # the extra `cost`, in the dev install
from genai_prices import Usage, calc_price  # noqa: E402

MODELS = (("gpt-4o", "openai"), ("claude-3-5-sonnet", "anthropic"), ("gemini-2.5-pro", "google"))
UNKNOWN = ("llm-nobody-sells", "openai")
IN_HOUSE = "in-house-llm"


async def test_written_calls_read_back_within_two_percent_and_priced_as_genai_prices(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """3,000 calls with log-normal latencies and heavy-tailed token counts: the roll-ups'
    p50/p95/p99 per model, from the SQL function and from `tracewriter stats --format json`,
    are within 2 % of percentile_disc over the spans; each call's cost is genai-prices' own
    (or the configured price), an unknown model's is NULL and counted, and cost rolls up per
    model into the stats."""
    rng = random.Random(15)
    async with ObservabilityService(
        db_dsn,
        flush_interval=0.05,
        max_batch_rows=500,
        prices={IN_HOUSE: {"input": "0.1", "output": "0.2"}},
    ) as svc:
        for i in range(3000):
            model, provider = (*MODELS, UNKNOWN, (IN_HOUSE, None))[i % 5]
            inp = min(int(40 * rng.paretovariate(0.8)), 2_000_000)
            out = int(rng.lognormvariate(5, 1.3))
            svc.log_llm_call(
                None,
                model=model,
                provider=provider,
                duration_ms=rng.lognormvariate(6.5 + (i % 5) / 2, 1.0),
                input_tokens=inp,
                cached_input_tokens=inp // 4,
                output_tokens=out,
                reasoning_tokens=out // 3,
            )
            if i % 500 == 0:
                await svc.flush(timeout=30)  # several flushes: rows merge in the upsert
        assert await svc.flush(timeout=60)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == 3000
    assert stats.calls_priced == 2400
    assert stats.calls_unpriced == 600  # the unknown model

    async with pool.acquire() as conn:
        for metric, column in (
            ("span.duration_ms", "duration_ms"),
            ("llm.input_tokens", "input_tokens"),
            ("llm.output_tokens", "output_tokens"),
        ):
            sketched = {
                r["model"]: r
                for r in await conn.fetch(
                    "SELECT model, n, observability.sketch_quantile(s, 0.5) AS p50, "
                    "observability.sketch_quantile(s, 0.95) AS p95, "
                    "observability.sketch_quantile(s, 0.99) AS p99 "
                    "FROM (SELECT model, sum(count) AS n, observability.sketch_merge(sketch) AS s "
                    "FROM observability.metrics_aggregates WHERE metric = $1 GROUP BY model) AS m",
                    metric,
                )
            }
            exact = await conn.fetch(
                f"SELECT model, count(*) AS n, "
                f"percentile_disc(0.5) WITHIN GROUP (ORDER BY {column}) AS p50, "
                f"percentile_disc(0.95) WITHIN GROUP (ORDER BY {column}) AS p95, "
                f"percentile_disc(0.99) WITHIN GROUP (ORDER BY {column}) AS p99 "
                "FROM observability.spans GROUP BY model"
            )
            assert len(exact) == 5
            for want in exact:
                got = sketched[want["model"]]
                assert got["n"] == want["n"] == 600
                for p in ("p50", "p95", "p99"):
                    assert abs(got[p] - want[p]) <= 0.02 * want[p], (metric, want["model"], p)

        rows = await conn.fetch(
            "SELECT model, provider, input_tokens, cached_input_tokens, output_tokens, "
            'reasoning_tokens, "timestamp", cost_usd, price_source, price_version '
            "FROM observability.spans"
        )
        totals: dict[str, Decimal] = {}
        for r in rows:
            if r["model"] == UNKNOWN[0]:
                assert (r["cost_usd"], r["price_source"], r["price_version"]) == (None,) * 3
                continue
            if r["model"] == IN_HOUSE:
                want = (
                    Decimal("0.1") * r["input_tokens"] + Decimal("0.2") * r["output_tokens"]
                ) / 1_000_000
                assert r["price_source"] == "user"
            else:
                want = calc_price(
                    Usage(
                        input_tokens=r["input_tokens"],
                        cache_read_tokens=r["cached_input_tokens"],
                        output_tokens=r["output_tokens"],
                        output_reasoning_tokens=r["reasoning_tokens"],
                    ),
                    model_ref=r["model"],
                    provider_id=r["provider"],
                    genai_request_timestamp=r["timestamp"],
                ).total_price
                assert (r["price_source"], r["price_version"]) == (
                    "genai-prices",
                    genai_prices.__version__,
                )
            assert r["cost_usd"] == want, r["model"]
            totals[r["model"]] = totals.get(r["model"], Decimal(0)) + want

        rolled = dict(
            await conn.fetch(
                "SELECT model, sum(sum) FROM observability.metrics_aggregates "
                "WHERE metric = 'llm.cost_usd' GROUP BY model"
            )
        )
    assert set(rolled) == set(totals)
    for model, total in totals.items():
        assert rolled[model] == pytest.approx(float(total), rel=1e-9)

    # The same figures through the command line.
    capsys.readouterr()
    assert (
        await asyncio.to_thread(
            main, ["stats", "--since", "1h", "--dsn", db_dsn, "--format", "json"]
        )
        == 0
    )
    models = {m["model"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    async with pool.acquire() as conn:
        exact = await conn.fetch(
            "SELECT model, percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms, "
            "percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms, "
            "percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms "
            "FROM observability.spans GROUP BY model"
        )
    assert len(models) == len(exact) == 5
    for want in exact:
        got = models[want["model"]]
        assert got["calls"] == 600
        for p in ("p50_ms", "p95_ms", "p99_ms"):
            assert abs(got[p] - want[p]) <= 0.02 * want[p], (want["model"], p)
        if want["model"] == UNKNOWN[0]:
            assert got["cost_usd"] is None
        else:
            assert got["cost_usd"] == pytest.approx(float(totals[want["model"]]), rel=1e-9)


async def test_a_streamed_call_priced_at_its_end_fills_its_open_row(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A span handle whose start was written open is priced from its end's model and tokens,
    and the end-upsert fills the open row's cost columns."""
    async with ObservabilityService(db_dsn, flush_interval=0.05, open_row_grace=0.0) as svc:
        handle = svc.start_span(None, "llm.stream", "llm")
        assert await svc.flush(timeout=30)  # the start goes out as an open row
        handle.end(model="gpt-4o", provider="openai", input_tokens=1_000, output_tokens=200)
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.calls_priced == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            'SELECT status, "timestamp", cost_usd, price_source FROM observability.spans'
        )
    assert row is not None and row["status"] == "ok"
    want = calc_price(
        Usage(input_tokens=1_000, output_tokens=200),
        model_ref="gpt-4o",
        provider_id="openai",
        genai_request_timestamp=row["timestamp"],
    ).total_price
    assert (row["cost_usd"], row["price_source"]) == (want, "genai-prices")
