"""Runs `bench_hotpath.py` under pytest-benchmark and turns its JSON into figures.

Owns the subprocess call (a pytest run of its own, so the measurement process holds nothing
else) and the arithmetic from per-round times to per-call times and ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, Figure, Report, ratio, say, verdict

_TW = {
    "test_log_llm_call": ("hot_llm", "log_llm_call (context, 142-byte metadata)"),
    "test_span_sync": ("hot_span_sync", "span() enter+exit, with (2 events)"),
    "test_span_async": ("hot_span_async", "span() enter+exit, async with (2 events)"),
    "test_start_end_trace": ("hot_trace", "start_trace + end_trace (2 events)"),
}
_OTEL = {
    "test_otel_start_as_current_span": (
        "otel_current",
        "OpenTelemetry start_as_current_span, BatchSpanProcessor, no-op exporter",
    ),
    "test_otel_start_span_end": ("otel_start_end", "OpenTelemetry start_span + end"),
}


# Issue 11's targets for the recording calls, as multiples of the floor of the same run.
_FLOOR_TARGETS = {"hot_llm": 8.0, "hot_span_sync": 20.0, "hot_trace": 15.0}


def _run_pytest(rounds: int, inner: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hotpath.json"
        env = {**os.environ, "TW_BENCH_ROUNDS": str(rounds), "TW_BENCH_INNER": str(inner)}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/bench_hotpath.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=900",
            f"--benchmark-json={out}",
            "--benchmark-columns=median,min,max,rounds",
            "--benchmark-sort=name",
        ]
        done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"pytest-benchmark run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def run(report: Report, *, rounds: int, inner: int) -> None:
    section = "Hot path (µs per call, median)"
    say(f"  pytest-benchmark: {rounds} rounds × {inner} calls per benchmark ...")
    data = _run_pytest(rounds, inner)
    per_call: dict[str, float] = {}
    spread: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        n = bench["extra_info"]["inner"]
        stats = bench["stats"]
        name = bench["name"]
        per_call[name] = stats["median"] / n * 1e6
        spread[name] = {
            k: stats[k] / n * 1e6 for k in ("min", "max", "mean", "median", "stddev", "iqr")
        }
        spread[name]["rounds"] = stats["rounds"]
    report.details["hot_path"] = {
        "per_call_us": spread,
        "machine_info": data.get("machine_info", {}),
    }
    floor = per_call["test_floor_deque_append"]
    report.add(
        Figure(
            "hot_floor",
            section,
            "Floor: deque.append of a same-size tuple of the same arguments",
            floor,
            "µs",
            1.0,
            "floor",
        )
    )
    llm = per_call["test_log_llm_call"]
    for test, (key, label) in _TW.items():
        value = per_call[test]
        r = ratio(value, floor)
        limit = _FLOOR_TARGETS.get(key)  # the async span shares the sync one's target
        report.add(
            Figure(
                key,
                section,
                label,
                value,
                "µs",
                r,
                "floor",
                f"≤ {limit:g} × floor" if limit else "",
                verdict(r <= limit if r is not None else None) if limit else "—",
            )
        )
    for test, (key, label) in _OTEL.items():
        value = per_call[test]
        report.add(Figure(key, section, label, value, "µs", ratio(value, floor), "floor"))
    for test, (key, label) in _OTEL.items():
        r = ratio(per_call[test], llm)
        short = label.split(",")[0].removeprefix("OpenTelemetry ")
        targeted = key == "otel_start_end"  # issue 11 names start_span + end
        report.add(
            Figure(
                f"{key}_vs_llm",
                section,
                f"OpenTelemetry {short} / log_llm_call",
                r,
                "×",
                target="≥ 20 ×" if targeted else "",
                status=verdict(r >= 20 if r is not None else None) if targeted else "—",
            )
        )
    r = ratio(per_call["test_otel_start_as_current_span"], per_call["test_span_sync"])
    report.add(
        Figure(
            "otel_vs_span",
            section,
            "OpenTelemetry start_as_current_span / span() enter+exit",
            r,
            "×",
        )
    )
    ref_section = "Reference costs on this machine (µs per call, median)"
    for name, value in per_call.items():
        if name.startswith("test_reference_cost["):
            what = name.removeprefix("test_reference_cost[").removesuffix("]")
            report.add(
                Figure(
                    f"ref_{what}",
                    ref_section,
                    what,
                    value,
                    "µs",
                    ratio(value, floor),
                    "floor",
                )
            )
