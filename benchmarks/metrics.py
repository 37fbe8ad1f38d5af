"""What issue 15's sketches and costs add to the flusher's work per value, call and row.

    python -m benchmarks.metrics [--rows 20000] [--rounds 7]

Prints, from one run on one machine, in process CPU time (the machine is shared: wall-clock
figures swing with the neighbours), the median of ``rounds`` interleaved rounds:

1. per value rolled up: the √2 histogram's bucket and increment (what a roll-up did before)
   against ``Sketch.add`` (what it does now, besides);
2. per LLM call priced: ``genai_prices.calc_price`` against ``CostCalculator.cost`` (rates
   derived once per model and tier, then four Decimal products);
3. per LLM span row: building it unpriced against priced (``priced_builders``);
4. per LLM span row rolled up (four metrics, each with a sketch and the histogram).

Needs the ``cost`` extra (genai-prices).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import statistics
import time
import uuid
from collections.abc import Callable

from genai_prices import Usage, calc_price

from tracewriter import _schema as schema
from tracewriter._cost import CostCalculator
from tracewriter._records import BUILDERS, EventKind, priced_builders
from tracewriter._rollup import Rollup, histogram_bucket
from tracewriter._sketch import Sketch

_MODELS = (("gpt-4o", "openai"), ("claude-3-5-sonnet", "anthropic"), ("gemini-2.5-pro", "google"))


def _cpu_us(run: Callable[[], object], items: int) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) / items * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(15)
    now = time.time_ns()
    values = [rng.lognormvariate(6, 1.2) for _ in range(args.rows)]
    events = []
    for i, d in enumerate(values):
        model, provider = _MODELS[i % 3]
        detail = (model, provider, rng.randrange(1, 50_000), rng.randrange(1, 2_000), 0, 0)
        events.append(
            (EventKind.SPAN, now - int(d * 1e6), now, uuid.uuid4().hex, uuid.uuid4().hex[:16],
             None, "llm.call", "llm", "ok", d, None, None, "u", "s", "kb", None, detail)
        )  # fmt: skip
    calls = [e[-1] for e in events[:2_000]]
    when = dt.datetime.now(dt.UTC)
    calculator = CostCalculator()
    calculator.load()
    _, priced = priced_builders(calculator)
    plain_row, priced_row = BUILDERS[EventKind.SPAN][1], priced[EventKind.SPAN][1]
    rows = [priced_row(e) for e in events]  # also warms the rate cache

    def histogram() -> None:
        hist = [0] * schema.HISTOGRAM_BUCKETS
        for v in values:
            hist[histogram_bucket(v)] += 1

    def sketch() -> None:
        s = Sketch()
        for v in values:
            s.add(v)

    def genai() -> None:
        for m, p, i, o, _, _ in calls:
            calc_price(Usage(input_tokens=i, output_tokens=o), m, provider_id=p,
                       genai_request_timestamp=when)  # fmt: skip

    def ours() -> None:
        for m, p, i, o, _, _ in calls:
            calculator.price(m, p, i, o, None, None, when)  # what the row builders call

    def roll() -> None:
        r = Rollup()
        r.add_rows(schema.SPANS, rows)
        r.take_rows(len(r))

    cases: list[tuple[str, Callable[[], object], int]] = [
        ("value: √2 histogram bucket + increment", histogram, len(values)),
        ("value: Sketch.add", sketch, len(values)),
        ("call: genai_prices.calc_price", genai, len(calls)),
        ("call: CostCalculator.cost", ours, len(calls)),
        ("row: build an LLM span row, unpriced", lambda: list(map(plain_row, events)), len(rows)),
        ("row: build an LLM span row, priced", lambda: list(map(priced_row, events)), len(rows)),
        ("row: roll up an LLM span row (4 metrics)", roll, len(rows)),
    ]  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        for name, run, items in cases:
            samples[name].append(_cpu_us(run, items))
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {args.rows} rows, median of {args.rounds} rounds, CPU time"
    )
    median = {name: statistics.median(s) for name, s in samples.items()}
    for name, us in median.items():
        print(f"  {name:<44} {us:8.2f} µs")
    print("ratios:")
    print(f"  Sketch.add / histogram            {median[cases[1][0]] / median[cases[0][0]]:6.2f}×")
    print(f"  CostCalculator.cost / calc_price  {median[cases[3][0]] / median[cases[2][0]]:6.3f}×")
    print(f"  priced / unpriced span row        {median[cases[5][0]] / median[cases[4][0]]:6.2f}×")


if __name__ == "__main__":
    main()
