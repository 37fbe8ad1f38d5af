"""The cost of LLM calls: against genai-prices' own calculation, user prices, bad input."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter._cost import Cost, CostCalculator, UserPrice
from tracewriter.errors import ConfigurationError

genai_prices = pytest.importorskip("genai_prices")  # the extra `cost`, in the dev install
from genai_prices import Usage, calc_price, data_snapshot  # noqa: E402

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
WHEN = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def genai_total(
    model: str, provider: str | None, inp: int, cached: int, out: int, reasoning: int
) -> Decimal | None:
    """genai-prices' own price of a call, or None where it cannot price it."""
    try:
        return calc_price(
            Usage(
                input_tokens=inp,
                cache_read_tokens=cached,
                output_tokens=out,
                output_reasoning_tokens=reasoning,
            ),
            model_ref=model,
            provider_id=provider,
            genai_request_timestamp=WHEN,
        ).total_price
    except LookupError:
        return None


@st.composite
def usages(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(input, cached input, output, reasoning) with each part within its whole."""
    inp = draw(st.integers(0, 3_000_000))
    out = draw(st.integers(0, 200_000))
    return inp, draw(st.integers(0, inp)), out, draw(st.integers(0, out))


# gpt-4o: cached input priced apart; o3: reasoning; the Gemini and Claude models have price
# tiers above 128k/200k input tokens; sonar has a per-request price.
PRICED = [
    ("gpt-4o", "openai"),
    ("o3", "openai"),
    ("gemini-2.5-pro", "google"),
    ("gemini-1.5-flash", "google"),
    ("claude-sonnet-4-5", "anthropic"),
    ("sonar", "perplexity"),
    ("claude-3-5-sonnet", None),  # provider found from the model name
]


# One calculator for every example, so that its remembered rates are what gets tested.
CALCULATOR = CostCalculator()


@SETTINGS
@given(st.sampled_from(PRICED), usages())
def test_cost_equals_genai_prices_own_calculation(
    model_provider: tuple[str, str | None], usage: tuple[int, int, int, int]
) -> None:
    """For tiered, cached, reasoning and per-request prices, the cost is genai-prices' exactly."""
    model, provider = model_provider
    inp, cached, out, reasoning = usage
    got = CALCULATOR.cost(
        model,
        provider,
        input_tokens=inp,
        cached_input_tokens=cached,
        output_tokens=out,
        reasoning_tokens=reasoning,
        timestamp=WHEN,
    )
    want = genai_total(model, provider, inp, cached, out, reasoning)
    assert want is not None
    assert got == Cost(want, "genai-prices", genai_prices.__version__)


def catalogue_calls(seed: int, per_model: int) -> Iterator[tuple[str, str, int, int, int, int]]:
    """(model, provider, input, cached, output, reasoning) for every model of the bundled
    catalogue, ``per_model`` times, with seeded counts on both sides of the price tiers."""
    rng = random.Random(seed)
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for _ in range(per_model):
                inp = rng.choice([0, 1, 900, 127_999, 128_001, 200_001, 1_500_000])
                out = rng.choice([0, 7, 4_000, 90_000])
                yield (
                    model.id,
                    provider.id,
                    inp,
                    rng.randrange(inp + 1),
                    out,
                    rng.randrange(out + 1),
                )


def test_every_model_in_the_price_database_is_priced_as_genai_prices_prices_it() -> None:
    """Across the whole bundled catalogue (seeded counts, both sides of the tiers): equal."""
    calculator = CostCalculator()
    compared = 0
    for model_id, provider_id, inp, cached, out, reasoning in catalogue_calls(15, 1):
        want = genai_total(model_id, provider_id, inp, cached, out, reasoning)
        got = calculator.cost(
            model_id,
            provider_id,
            input_tokens=inp,
            cached_input_tokens=cached,
            output_tokens=out,
            reasoning_tokens=reasoning,
            timestamp=WHEN,
        )
        if want is None:  # genai-prices cannot resolve it either: neither can we
            assert got is None, (provider_id, model_id)
        else:
            assert got is not None and got.usd == want, (provider_id, model_id)
            compared += 1
    assert compared > 1000
    assert calculator.stats.failed == 0


def test_unknown_models_and_providers_get_none_and_are_counted() -> None:
    """A model or provider genai-prices does not know: None, and unknown_model counts it."""
    calculator = CostCalculator()
    assert calculator.cost("no-such-model-xyz", "openai", input_tokens=10, output_tokens=5) is None
    assert calculator.cost("gpt-4o", "no-such-provider", input_tokens=10, output_tokens=5) is None
    assert calculator.cost("no-such-model-xyz", None, input_tokens=10, output_tokens=5) is None
    assert calculator.cost(None, "openai", input_tokens=10, output_tokens=5) is None
    # asked again: answered from memory, still counted
    assert calculator.cost("no-such-model-xyz", "openai", input_tokens=1, output_tokens=1) is None
    assert calculator.stats.unknown_model == 5
    assert calculator.stats.unpriced == 5
    assert calculator.stats.priced == 0


def test_user_prices_take_precedence_and_are_versioned_by_their_content() -> None:
    """A configured model is priced from the user's table, with source 'user' and a digest."""
    prices = {
        "gpt-4o": UserPrice(input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("1")),
        "azure/gpt-4o": {"input": "3", "output": "9"},
        "in-house-llm": {"input": 0.5, "output": 1.5, "reasoning": 3},
    }
    calculator = CostCalculator(prices=prices)
    got = calculator.cost(
        "GPT-4o", "openai", input_tokens=1_000, cached_input_tokens=400, output_tokens=100
    )
    assert got is not None
    # 600 uncached at $2/M, 400 cached at $1/M, 100 output at $8/M
    assert got.usd == Decimal("0.0012") + Decimal("0.0004") + Decimal("0.0008")
    assert got.source == "user"
    assert got.version.startswith("sha256:")
    azure = calculator.cost("gpt-4o", "azure", input_tokens=1_000_000, output_tokens=0)
    assert azure is not None and azure.usd == Decimal(3)
    own = calculator.cost("in-house-llm", None, output_tokens=1_000_000, reasoning_tokens=500_000)
    assert own is not None and own.usd == Decimal("0.75") + Decimal("1.5")
    # a model without a user price still gets genai-prices' price
    o3 = calculator.cost("o3", "openai", input_tokens=1_000, output_tokens=1_000, timestamp=WHEN)
    assert o3 is not None and o3.source == "genai-prices"
    changed = CostCalculator(prices={**prices, "gpt-4o": {"input": "2.5", "output": "8"}})
    again = changed.cost("gpt-4o", "openai", input_tokens=1, output_tokens=1)
    assert again is not None and again.version != got.version
    assert CostCalculator(prices=prices).cost("gpt-4o", None, input_tokens=1) == Cost(
        Decimal("0.000002"), "user", got.version
    )


def test_user_prices_work_without_genai_prices_and_unknowns_stay_none() -> None:
    """use_genai_prices=False prices only the configured models; others are unknown."""
    calculator = CostCalculator(prices={"m": {"input": 1, "output": 1}}, use_genai_prices=False)
    assert calculator.cost("m", None, input_tokens=1_000_000) == Cost(
        Decimal(1),
        "user",
        calculator.cost("m", None, input_tokens=1).version,  # type: ignore[union-attr]
    )
    assert calculator.cost("gpt-4o", "openai", input_tokens=10) is None
    assert calculator.stats.unknown_model == 1


@pytest.mark.parametrize(
    "prices",
    [
        {"m": {"input": -1, "output": 1}},
        {"m": {"input": "NaN", "output": 1}},
        {"m": {"input": "cheap", "output": 1}},
        {"m": {"output": 1}},
        {"m": {"input": 1, "output": 1, "cache_write": 2}},
        {"m": {"input": float("inf"), "output": 1}},
    ],
)
def test_malformed_user_prices_raise_at_construction_naming_the_model(
    prices: dict[str, dict[str, object]],
) -> None:
    """A bad price is a configuration mistake: ConfigurationError at start-up, model named."""
    with pytest.raises(ConfigurationError, match=r"prices\['m'\]"):
        CostCalculator(prices=prices)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("counts", "outcome"),
    [
        ({"input_tokens": 10, "cached_input_tokens": 11}, "invalid_usage"),
        ({"output_tokens": 10, "reasoning_tokens": 11}, "invalid_usage"),
        ({"input_tokens": -1}, "invalid_usage"),
        ({"input_tokens": True}, "invalid_usage"),
        ({"input_tokens": 2.5}, "invalid_usage"),
        ({"input_tokens": "10"}, "invalid_usage"),
        ({"input_tokens": float("nan")}, "invalid_usage"),
        ({}, "no_usage"),
        ({"cached_input_tokens": 5}, "no_usage"),
    ],
)
def test_bad_or_missing_counts_give_none_and_are_counted(
    counts: dict[str, object], outcome: str
) -> None:
    """Inconsistent or non-integer counts never raise: None, counted by kind."""
    calculator = CostCalculator()
    assert calculator.cost("gpt-4o", "openai", **counts) is None  # type: ignore[arg-type]
    assert getattr(calculator.stats, outcome) == 1
    assert calculator.stats.priced == 0


def test_whole_floats_and_missing_parts_are_accepted() -> None:
    """1000.0 counts as 1000 and a missing part as 0, priced as genai-prices prices them."""
    got = CostCalculator().cost(
        "gpt-4o", "openai", input_tokens=1000.0, output_tokens=None, timestamp=WHEN
    )
    assert got is not None and got.usd == genai_total("gpt-4o", "openai", 1000, 0, 0, 0)


def test_a_naive_timestamp_is_taken_as_utc() -> None:
    """A naive datetime prices the same as the aware UTC one (no TypeError inside)."""
    calculator = CostCalculator()
    naive = calculator.cost("gpt-4o", "openai", input_tokens=5, timestamp=WHEN.replace(tzinfo=None))
    assert naive == calculator.cost("gpt-4o", "openai", input_tokens=5, timestamp=WHEN)
    assert calculator.stats.failed == 0


def test_updated_price_data_shows_in_the_version() -> None:
    """When UpdatePrices' data replaces the bundled data, the version names its date."""
    bundled = data_snapshot.get_snapshot()
    updated = data_snapshot.DataSnapshot(
        providers=bundled.providers,
        from_auto_update=True,
        timestamp=dt.datetime(2026, 11, 29, 8, 30),
    )
    calculator = CostCalculator()
    before = calculator.cost("gpt-4o", "openai", input_tokens=5, timestamp=WHEN)
    data_snapshot.set_custom_snapshot(updated)
    try:
        after = calculator.cost("gpt-4o", "openai", input_tokens=5, timestamp=WHEN)
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert before is not None and before.version == genai_prices.__version__
    assert after is not None
    assert after.version == f"{genai_prices.__version__}+data.20261129T083000"
    assert after.usd == before.usd


def in_fresh_interpreter(script: str) -> str:
    """Run ``script`` in a new Python process (nothing imported or cached yet); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_the_extra_the_module_imports_and_notes_it_once() -> None:
    """With genai_prices unimportable: cost() is None, counted, and one warning says why."""
    script = (
        "import sys; sys.modules['genai_prices'] = None\n"
        "from tracewriter._cost import CostCalculator\n"
        "c = CostCalculator(prices={'mine': {'input': 1, 'output': 1}})\n"
        "assert not c.load()\n"
        "assert c.cost('gpt-4o', 'openai', input_tokens=5) is None\n"
        "assert c.cost('gpt-4o', 'openai', input_tokens=5) is None\n"
        "assert c.cost('mine', None, input_tokens=1_000_000).usd == 1\n"
        "print('stats', c.stats.unavailable, c.stats.priced)\n"
    )
    out = in_fresh_interpreter(script)
    assert "stats 2 1" in out
    assert out.count("cost_prices_unavailable") == 1
    assert "tracewriter[cost]" in out


def test_load_builds_the_price_data_so_the_first_price_does_not() -> None:
    """load() (run by the writer's start(), in a thread) imports genai-prices and builds its
    ~16,000 objects of price data (~25 ms): the first price, on the writer's loop, finds them
    built instead of building them there."""
    script = (
        "import sys\n"
        "from tracewriter._cost import CostCalculator\n"
        "c = CostCalculator()\n"
        "print('before', 'genai_prices.data' in sys.modules)\n"
        "assert c.load()\n"
        "from genai_prices import data_snapshot\n"
        "print('built', data_snapshot._bundled_snapshot.cache_info().currsize)\n"
        "assert c.cost('gpt-4o', 'openai', input_tokens=5) is not None\n"
        "print('after', data_snapshot._bundled_snapshot.cache_info().misses)\n"
    )
    out = in_fresh_interpreter(script)
    assert "before False" in out and "built 1" in out
    assert "after 1" in out  # built once, by load(), not again by the first price


# --- price(): the row builders' positional entry, with remembered plans -------------------------


def test_price_prices_the_whole_catalogue_as_cost_does_once_the_plan_is_remembered() -> None:
    """price() twice per model (the second from the remembered plan) against genai-prices."""
    calculator = CostCalculator()
    compared = 0
    for model_id, provider_id, inp, cached, out, reasoning in catalogue_calls(11, 2):
        want = genai_total(model_id, provider_id, inp, cached, out, reasoning)
        got = calculator.price(model_id, provider_id, inp, out, cached, reasoning, WHEN)
        if want is None:
            assert got is None, (provider_id, model_id)
        else:
            assert got is not None and got.usd == want, (provider_id, model_id, inp)
            assert got.version == genai_prices.__version__
            compared += 1
    assert compared > 2000
    assert calculator.stats.failed == 0
    assert len(calculator._plans) > 500  # the fast path was there to be taken


@pytest.mark.parametrize(
    ("counts", "outcome"),
    [
        ((10, None, 11, None), "invalid_usage"),  # cached above input
        ((None, 10, None, 11), "invalid_usage"),  # reasoning above output
        ((-1, None, None, None), "invalid_usage"),
        ((True, None, None, None), "invalid_usage"),
        ((2.5, None, None, None), "invalid_usage"),
        (("10", None, None, None), "invalid_usage"),
        ((None, None, None, None), "no_usage"),
        ((None, None, 5, None), "no_usage"),
    ],
)
def test_price_on_a_remembered_plan_still_refuses_bad_counts(
    counts: tuple[object, object, object, object], outcome: str
) -> None:
    """Once gpt-4o has a plan, bad counts still give None and are counted, as through cost()."""
    calculator = CostCalculator()
    assert calculator.price("gpt-4o", "openai", 5, 5, None, None, WHEN) is not None
    inp, out, cached, reasoning = counts
    assert calculator.price("gpt-4o", "openai", inp, out, cached, reasoning, WHEN) is None
    assert getattr(calculator.stats, outcome) == 1
    assert calculator.stats.priced == 1


def test_price_with_user_prices_and_missing_parts_from_the_plan() -> None:
    """User prices through price(), twice; a missing count is 0, as cost() takes it."""
    calculator = CostCalculator(prices={"mine": {"input": 2, "output": 4}})
    for _ in range(2):
        got = calculator.price("mine", None, 1_000_000, None, None, None, WHEN)
        assert got is not None and got.usd == 2 and got.source == "user"
        got = calculator.price("mine", None, None, 500_000, None, None, WHEN)
        assert got is not None and got.usd == 2
    assert calculator.stats.priced == 4


def test_price_follows_new_price_data_after_a_plan_was_remembered() -> None:
    """UpdatePrices' data replacing the bundled data makes price() ask again (new version)."""
    bundled = data_snapshot.get_snapshot()
    updated = data_snapshot.DataSnapshot(
        providers=bundled.providers, from_auto_update=True, timestamp=dt.datetime(2026, 11, 29)
    )
    calculator = CostCalculator()
    before = calculator.price("gpt-4o", "openai", 5, 5, None, None, WHEN)
    data_snapshot.set_custom_snapshot(updated)
    try:
        after = calculator.price("gpt-4o", "openai", 5, 5, None, None, WHEN)
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert before is not None and after is not None
    assert after.version == f"{genai_prices.__version__}+data.20261129T000000"
    assert after.usd == before.usd


def test_price_remembers_an_unknown_model_and_still_counts_and_logs_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A self-hosted model: None every time from the remembered plan, each call counted, the
    info line logged (rate-limited); new price data makes the calculator look it up again."""
    calculator = CostCalculator()
    for _ in range(3):
        assert calculator.price("my-llama-3-70b", "local", 10, 5, None, None, WHEN) is None
    assert calculator.stats.unknown_model == 3 and calculator.stats.priced == 0
    assert calculator._plans[("my-llama-3-70b", "local")].rates is None
    assert "cost_model_unknown" in capsys.readouterr().out
    # bad counts are refused as such, not counted as an unknown model
    assert calculator.price("my-llama-3-70b", "local", -1, 5, None, None, WHEN) is None
    assert calculator.stats.invalid_usage == 1 and calculator.stats.unknown_model == 3
    bundled = data_snapshot.get_snapshot()
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(
            providers=bundled.providers, from_auto_update=True, timestamp=dt.datetime(2026, 12, 1)
        )
    )
    try:
        assert calculator.price("my-llama-3-70b", "local", 10, 5, None, None, WHEN) is None
        assert calculator._plans[("my-llama-3-70b", "local")].snapshot is not bundled
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert calculator.stats.unknown_model == 4
