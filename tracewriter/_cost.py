"""The cost of an LLM call in USD, from its model, provider and token counts.

Owns pricing: the prices the user configured per model, else the ``genai-prices`` package (a
maintained price database; the optional extra ``tracewriter[cost]``). It runs in the writer's
background path when a span's row is built, never on the recording path, and knows nothing of
rows, SQL or the flusher: it takes counts and returns a :class:`Cost` or None.

Token counts follow the OpenTelemetry GenAI conventions, as the spans table stores them:
``input_tokens`` is the whole prompt, cached tokens included (``cached_input_tokens`` is the part
read from the provider's cache, ``gen_ai.usage.cache_read.input_tokens``), and ``output_tokens``
is the whole completion, reasoning included (``reasoning_tokens`` is that part). Anthropic's raw
API reports ``input_tokens`` without the cache reads: add them before recording. A part larger
than its whole is inconsistent; such a call gets no cost and is counted as ``invalid_usage``.

What is stored (``spans.cost_usd``, ``price_source``, ``price_version``): the exact decimal, and
where its prices came from — ``"genai-prices"`` with the package version (plus the date of the
price data when ``genai_prices.UpdatePrices`` has replaced the bundled data), or ``"user"`` with a
digest of the configured prices, so that a change of prices is visible in the data.

OpenTelemetry has no cost attribute yet. The proposal (semantic-conventions-genai issue #287,
pull request #443, open at the time of writing) puts ``gen_ai.usage.cost.amount`` (double),
``gen_ai.usage.cost.currency`` (ISO 4217) and ``gen_ai.usage.cost.source`` (``provider`` when the
response carried the cost, ``local`` when the recorder computed it) on inference spans. Ours map
onto it as amount = ``cost_usd``, currency = ``"USD"``, source = ``local``; ``price_source`` and
``price_version`` say more than the proposal asks, and an exporter can drop them.

Speed: ``genai_prices.calc_price`` costs about 125 µs a call (mostly validating and
decomposing the usage each time). Prices are linear in the four counts as long as the total
input stays within one price tier, so for each (model price, tier) the calculator asks
genai-prices once for the per-token rates, checks them against one more of its answers, and
then prices a call with four Decimal multiplications. A model whose prices fail that check is
priced by ``calc_price`` itself every time. ``tests/test_cost.py`` compares the two.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple

from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter.errors import ConfigurationError

__all__ = ["Cost", "CostCalculator", "CostStats", "UserPrice"]

# The optional extra tracewriter[cost], imported on first use: importing it (pydantic, an
# HTTP client, the price tables) takes about 0.3 s, which an application that never prices a
# call should not pay, and which must not land on an event loop: call
# CostCalculator.load() from a worker thread at start-up. Imported by name so that this module
# imports, and type-checks, the same with or without the package.
_genai_prices: Any = None
_data_snapshot: Any = None
_tried_import = False
_noted_unavailable = False


def _load_genai_prices() -> bool:
    """Import genai-prices the first time (per process); whether it is installed."""
    global _genai_prices, _data_snapshot, _tried_import
    if not _tried_import:
        try:
            module = importlib.import_module("genai_prices")
            snapshots = importlib.import_module("genai_prices.data_snapshot")
            snapshots.get_snapshot()  # builds the bundled price tables (about 20 ms)
            _genai_prices, _data_snapshot = module, snapshots
        except ImportError:
            pass
        _tried_import = True
    return _genai_prices is not None


_log = get_logger("cost")

GENAI_PRICES: Final = "genai-prices"
USER: Final = "user"
_MTOK: Final = Decimal(1_000_000)
# Bounds the memory of model names seen (unknown ones included): a flood of distinct names
# (a bug upstream, hostile input) must not grow the calculator without limit.
_MAX_REMEMBERED: Final = 4096


class Cost(NamedTuple):
    """The cost of one call: USD amount, price source and price version (a tuple of atoms)."""

    usd: Decimal
    source: str
    version: str


@dataclass(frozen=True, slots=True)
class UserPrice:
    """A user's price for one model, in USD per million tokens.

    Cached input defaults to the input price and reasoning to the output price (how providers
    bill them when they do not price them apart).
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(slots=True)
class CostStats:
    """How the calls the calculator saw ended."""

    priced: int = 0
    unknown_model: int = 0
    invalid_usage: int = 0
    no_usage: int = 0
    unavailable: int = 0
    failed: int = 0

    @property
    def unpriced(self) -> int:
        """Calls that had a model and token counts and still got no cost."""
        return self.unknown_model + self.invalid_usage + self.unavailable + self.failed


_new_tuple: Final = tuple.__new__


class _Counts(NamedTuple):
    """One call's token counts, checked: non-negative, parts within their wholes."""

    input: int
    cached_input: int
    output: int
    reasoning: int


class _Rates(NamedTuple):
    """Per-token USD rates within one price tier, and the fixed per-call part."""

    base: Decimal
    uncached_input: Decimal
    cached_input: Decimal
    plain_output: Decimal
    reasoning: Decimal


def _linear(rates: _Rates, inp: int, cached: int, out: int, reasoning: int) -> Decimal:
    """The cost of checked counts (the order of :class:`_Counts`) within one price tier.

    The parts that are zero are skipped (most calls have no cached or reasoning tokens):
    each Decimal product costs ~0.1 µs, and this runs once per priced row.
    """
    base, uncached_rate, cached_rate, output_rate, reasoning_rate = rates
    usd = base + uncached_rate * (inp - cached) + output_rate * (out - reasoning)
    if cached:
        usd += cached_rate * cached
    if reasoning:
        usd += reasoning_rate * reasoning
    return usd


def _decimal_price(name: str, value: object) -> Decimal:
    try:
        price = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ConfigurationError(f"prices: {name} is not a number: {value!r}") from exc
    if not price.is_finite() or price < 0:
        raise ConfigurationError(f"prices: {name} must be a finite number >= 0, got {value!r}")
    return price


def _user_rates(model: str, price: UserPrice | Mapping[str, object]) -> _Rates:
    if isinstance(price, UserPrice):
        fields: dict[str, object] = {
            "input": price.input,
            "output": price.output,
            "cached_input": price.cached_input,
            "reasoning": price.reasoning,
        }
    else:
        unknown = set(price) - {"input", "output", "cached_input", "reasoning"}
        if unknown:
            raise ConfigurationError(
                f"prices[{model!r}]: unknown keys {sorted(unknown)}; "
                "use input, output, cached_input, reasoning (USD per million tokens)"
            )
        fields = dict(price)
    for required in ("input", "output"):
        if fields.get(required) is None:
            raise ConfigurationError(f"prices[{model!r}]: {required} is required")
    inp = _decimal_price(f"prices[{model!r}].input", fields["input"])
    out = _decimal_price(f"prices[{model!r}].output", fields["output"])
    cached = fields.get("cached_input")
    reasoning = fields.get("reasoning")
    return _Rates(
        base=Decimal(0),
        uncached_input=inp / _MTOK,
        cached_input=(
            inp if cached is None else _decimal_price(f"prices[{model!r}].cached_input", cached)
        )
        / _MTOK,
        plain_output=out / _MTOK,
        reasoning=(
            out if reasoning is None else _decimal_price(f"prices[{model!r}].reasoning", reasoning)
        )
        / _MTOK,
    )


def _digest(rates: Mapping[str, _Rates]) -> str:
    canonical = repr(sorted((k, tuple(str(x) for x in r)) for k, r in rates.items()))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _count(value: object) -> int | None:
    """A token count as a non-negative int; None for missing; -1 for nonsense."""
    if value is None:
        return None
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value if value >= 0 else -1
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return -1


class _Plan(NamedTuple):
    """How to price one (model, provider) again without asking: see CostCalculator.price."""

    thresholds: list[int] | tuple[()]
    rates: dict[int, _Rates | None] | None  # None: a model the price data does not know
    source: str
    version: str
    snapshot: Any  # the genai-prices data it came from (None for a user price)


class _Tiers:
    """genai-prices' price for one model at one time, as linear rates per input tier."""

    __slots__ = ("model_price", "rates", "thresholds")

    def __init__(self, model_price: Any) -> None:
        self.model_price = model_price
        starts: set[int] = set()
        for value in vars(model_price).values():
            for tier in getattr(value, "tiers", None) or ():
                starts.add(int(tier.start))
        # A tier applies when the total input is strictly above its start.
        self.thresholds = sorted(starts)
        self.rates: dict[int, _Rates | None] = {}

    def segment(self, input_tokens: int) -> int:
        return bisect_left(self.thresholds, input_tokens)


class CostCalculator:
    """Prices LLM calls: the user's prices first, then genai-prices; None when unknown.

    Never raises on a call's values: a model it cannot price, inconsistent token counts or a
    failure inside genai-prices give None and a count in :attr:`stats`. ``prices`` maps a model
    name (or ``"provider/model"``, which wins over the bare name) to a :class:`UserPrice` or a
    mapping with the same keys, in USD per million tokens; a malformed price raises
    :class:`~tracewriter.errors.ConfigurationError` here, at start-up.
    """

    def __init__(
        self,
        *,
        prices: Mapping[str, UserPrice | Mapping[str, object]] | None = None,
        use_genai_prices: bool = True,
    ) -> None:
        self._user: dict[str, _Rates] = {
            name.lower(): _user_rates(name, price) for name, price in (prices or {}).items()
        }
        self._user_version = _digest(self._user) if self._user else ""
        self._use_genai = use_genai_prices
        self.stats = CostStats()
        self._snapshot: Any = None
        self._version = ""
        self._models: dict[tuple[str, str], Any] = {}  # (provider, model) -> ModelInfo | None
        self._tiers: dict[int, _Tiers] = {}  # id(ModelPrice) -> its rates
        # (model, provider) -> how to price it without asking again, for prices that do not
        # change with the time of the call: see price().
        self._plans: dict[tuple[object, object], _Plan] = {}
        self._unknown_log = RateLimitedLog(_log, "cost_model_unknown", level="info", interval=60)
        self._failed_log = RateLimitedLog(_log, "cost_failed", interval=60)

    def load(self) -> bool:
        """Import genai-prices now (blocking, ~0.3 s: run it in a thread); whether it is there.

        Optional: the first call that needs it imports it otherwise. User prices need nothing.
        """
        return self._use_genai and _load_genai_prices()

    def cost(
        self,
        model: str | None,
        provider: str | None = None,
        *,
        input_tokens: object = None,
        output_tokens: object = None,
        cached_input_tokens: object = None,
        reasoning_tokens: object = None,
        timestamp: _dt.datetime | None = None,
    ) -> Cost | None:
        """The cost of one call, or None (unknown model, no or inconsistent counts)."""
        inp, out = _count(input_tokens), _count(output_tokens)
        cached, reasoning = _count(cached_input_tokens), _count(reasoning_tokens)
        if inp is None and out is None:
            self.stats.no_usage += 1
            return None
        counts = _Counts(inp or 0, cached or 0, out or 0, reasoning or 0)
        if (
            min(counts) < 0
            or counts.cached_input > counts.input
            or counts.reasoning > counts.output
        ):
            self.stats.invalid_usage += 1
            return None
        try:
            return self._price(model, provider, counts, timestamp)
        except Exception as exc:  # a bug here or in genai-prices must not lose the row
            self.stats.failed += 1
            self._failed_log.hit(model=str(model)[:100], error=repr(exc)[:300])
            return None

    def price(  # noqa: PLR0917 - positional on purpose: once per LLM row
        self,
        model: object,
        provider: object,
        input_tokens: object,
        output_tokens: object,
        cached_input_tokens: object,
        reasoning_tokens: object,
        timestamp: _dt.datetime | None,
    ) -> Cost | None:
        """:meth:`cost` with positional arguments, for the row builders (once per LLM row).

        A model priced before at a price that does not depend on the time of the call (every
        user price; a genai-prices model without dated or time-of-day prices) has a remembered
        plan: its tier thresholds and per-tier rates; so has a model the price data does not
        know (counted and logged as :meth:`cost` does). A call with plain non-negative int counts
        is then priced with one dict lookup and four Decimal multiplications, about a tenth of
        the way through :meth:`cost`, which takes everything else (and fills the plans).
        """
        plan = self._plans.get((model, provider or None))
        if plan is not None:
            inp, out = input_tokens, output_tokens
            cached = 0 if cached_input_tokens is None else cached_input_tokens
            reasoning = 0 if reasoning_tokens is None else reasoning_tokens
            if inp is None:
                inp = 0 if out is not None else -1
            elif out is None:
                out = 0
            if (
                type(inp) is int
                and type(out) is int
                and type(cached) is int
                and type(reasoning) is int
                and 0 <= cached <= inp
                and 0 <= reasoning <= out
                and (plan.snapshot is None or plan.snapshot is _data_snapshot.get_snapshot())
            ):
                by_segment = plan.rates
                if by_segment is None:  # a model the price data does not know (self-hosted)
                    self.stats.unknown_model += 1
                    self._unknown_log.hit(
                        model=str(model)[:100], provider=str(provider or "")[:100]
                    )
                    return None
                thresholds = plan.thresholds
                rates = by_segment.get(bisect_left(thresholds, inp) if thresholds else 0)
                if rates is not None:
                    self.stats.priced += 1
                    usd = _linear(rates, inp, cached, out, reasoning)
                    # tuple.__new__: a NamedTuple's own __new__ is a Python-level call.
                    return _new_tuple(Cost, (usd, plan.source, plan.version))
        return self.cost(
            model,  # type: ignore[arg-type]  # cost() refuses what is not a model name
            provider,  # type: ignore[arg-type]
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            reasoning_tokens=reasoning_tokens,
            timestamp=timestamp,
        )

    def _remember(self, model: str, provider: str | None, plan: _Plan) -> None:
        if len(self._plans) >= _MAX_REMEMBERED:
            self._plans.clear()
        self._plans[(model, provider)] = plan

    def _price(
        self,
        model: str | None,
        provider: str | None,
        counts: _Counts,
        timestamp: _dt.datetime | None,
    ) -> Cost | None:
        if not isinstance(model, str) or not model:
            self.stats.unknown_model += 1
            return None
        provider = provider if isinstance(provider, str) and provider else None

        if self._user:
            key = model.lower()
            rates = self._user.get(f"{provider.lower()}/{key}") if provider else None
            if rates is None:
                rates = self._user.get(key)
            if rates is not None:
                self.stats.priced += 1
                self._remember(
                    model, provider, _Plan((), {0: rates}, USER, self._user_version, None)
                )
                return Cost(_linear(rates, *counts), USER, self._user_version)

        if not self._use_genai:
            self.stats.unknown_model += 1
            return None
        if not _load_genai_prices():
            global _noted_unavailable  # one note per process, not per writer
            self.stats.unavailable += 1
            if not _noted_unavailable:
                _noted_unavailable = True
                _log.warning(
                    "cost_prices_unavailable",
                    hint="pip install 'tracewriter[cost]' to price LLM calls with genai-prices; "
                    "until then cost_usd stays NULL except for models with configured prices",
                )
            return None
        return self._genai_cost(model, provider, counts, timestamp)

    def _genai_cost(
        self,
        model: str,
        provider: str | None,
        counts: _Counts,
        timestamp: _dt.datetime | None,
    ) -> Cost | None:
        snapshot = _data_snapshot.get_snapshot()
        if snapshot is not self._snapshot:  # first call, or UpdatePrices brought new data
            self._snapshot = snapshot
            self._models.clear()
            self._tiers.clear()
            self._plans.clear()
            self._version = str(_genai_prices.__version__)
            if snapshot.from_auto_update:
                self._version += f"+data.{snapshot.timestamp:%Y%m%dT%H%M%S}"

        key = (provider or "", model)
        if key in self._models:
            info = self._models[key]
        else:
            try:
                info = snapshot.find_provider_model(model, None, provider, None)
            except LookupError:
                info = None
            if len(self._models) >= _MAX_REMEMBERED:
                self._models.clear()
            self._models[key] = info
        if info is None:
            self.stats.unknown_model += 1
            self._unknown_log.hit(model=model[:100], provider=(provider or "")[:100])
            # Remembered as unknown until the price data changes: a self-hosted model's
            # every call then costs a dict lookup, not a search of the catalogue's names.
            self._remember(model, provider, _Plan((), None, "", "", snapshot))
            return None
        provider_info, model_info = info

        when = timestamp or _dt.datetime.now(_dt.UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        model_price = model_info.get_prices(when)
        tiers = self._tiers.get(id(model_price))
        if tiers is None or tiers.model_price is not model_price:
            if len(self._tiers) >= _MAX_REMEMBERED:
                self._tiers.clear()
            tiers = self._tiers[id(model_price)] = _Tiers(model_price)
        segment = tiers.segment(counts.input)
        if segment not in tiers.rates:
            tiers.rates[segment] = self._derive_rates(
                provider_info, model_info, tiers, segment, when
            )
        rates = tiers.rates[segment]
        if not isinstance(model_info.prices, list):
            # One price for all time (no dated or time-of-day prices): price() may reuse the
            # tiers' rates, filled in here segment by segment, for as long as this snapshot
            # lasts. (Had the user priced this model, we would not be here: that never changes.)
            self._remember(
                model, provider, _Plan(tiers.thresholds, tiers.rates, GENAI_PRICES, self._version,
                                       snapshot)
            )  # fmt: skip
        if rates is None:  # not linear: let genai-prices price it
            usd = self._calc(provider_info, model_info, counts, when)
        else:
            usd = _linear(rates, *counts)
        self.stats.priced += 1
        return Cost(usd, GENAI_PRICES, self._version)

    @staticmethod
    def _calc(provider_info: Any, model_info: Any, c: _Counts, when: _dt.datetime) -> Decimal:
        usage = _genai_prices.Usage(
            input_tokens=c.input,
            cache_read_tokens=c.cached_input,
            output_tokens=c.output,
            output_reasoning_tokens=c.reasoning,
        )
        result = model_info.calc_price(usage, provider_info, genai_request_timestamp=when)
        return Decimal(result.total_price)

    def _derive_rates(
        self,
        provider_info: Any,
        model_info: Any,
        tiers: _Tiers,
        segment: int,
        when: _dt.datetime,
    ) -> _Rates | None:
        """Per-token rates for inputs in ``segment``, asked of genai-prices and checked once."""
        thresholds = tiers.thresholds
        # Segment s holds the input totals in (thresholds[s-1], thresholds[s]]; the last one
        # is unbounded above.
        above = thresholds[segment - 1] if segment else -1
        upto = thresholds[segment] if segment < len(thresholds) else None
        x = upto if upto is not None else max(above + 1, 1_000_000)
        if x <= 0:
            return None  # a segment of no tokens at all: nothing linear to learn
        n = 1_000_000

        def calc(inp: int, cached: int, out: int, reasoning: int) -> Decimal:
            return self._calc(provider_info, model_info, _Counts(inp, cached, out, reasoning), when)

        at_x = calc(x, 0, 0, 0)
        if segment == 0:
            base = calc(0, 0, 0, 0)  # the fixed part of a call (a per-request price)
        else:
            # No call without input lies in this segment: extrapolate from two totals in it.
            y = x - 1 if upto is not None else x + 1
            if y <= above:
                return None  # a one-token segment
            base = at_x - (at_x - calc(y, 0, 0, 0)) / (x - y) * x
        rates = _Rates(
            base=base,
            uncached_input=(at_x - base) / x,
            cached_input=(calc(x, x, 0, 0) - base) / x,
            plain_output=(calc(x, 0, n, 0) - at_x) / n,
            reasoning=(calc(x, 0, n, n) - at_x) / n,
        )
        # One more answer with every count at once: a price that is not linear in them
        # (a unit inferred from the others, a rule we did not foresee) shows up here.
        probe = _Counts(x, x // 3, 12_345, 678)
        if _linear(rates, *probe) != calc(*probe):
            return None
        return rates
