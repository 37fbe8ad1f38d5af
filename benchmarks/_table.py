"""How benchmark figures print: the console table, and the cells RESULTS.md's table shares.

Owns the formatting of a :class:`~benchmarks._common.Figure` (its value with its unit, its ratio
to the floor or ceiling of the same run), so that ``benchmarks.run`` and the modules runnable
on their own (``benchmarks.cost``, ``benchmarks.asgi``) print the same table without importing
one another.
"""

from __future__ import annotations

import math

from benchmarks._common import Figure, Report, say


def format_value(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit in ("rows/s", "spans/s"):
        return f"{value:,.0f} {unit}"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "MB":
        return f"{value:,.1f} MB"
    if unit == "×":
        return f"{value:,.1f} ×"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 0.1 else f"{value:.3f} {unit}"


def format_ratio(f: Figure) -> str:
    if f.ratio is None or math.isnan(f.ratio):
        return ""
    r = f.ratio
    text = (
        f"{r:,.0f}"
        if r >= 100
        else f"{r:.1f}"
        if r >= 10
        else f"{r:.2f}"
        if r >= 0.1
        else f"{r:.3f}"
    )
    return f"{text} × {f.ratio_to}"


def by_section(report: Report) -> dict[str, list[Figure]]:
    grouped: dict[str, list[Figure]] = {}
    for f in report.figures:
        grouped.setdefault(f.section, []).append(f)
    return grouped


def print_table(report: Report) -> None:
    for section, figures in by_section(report).items():
        say(f"\n{section}")
        width = max(len(f.label) for f in figures)
        for f in figures:
            value = format_value(f.value, f.unit) if f.value is not None else ""
            say(
                f"  {f.label:<{width}}  {value:>16}"
                f"  {format_ratio(f):<26} {f.target:<24} {f.status}"
            )
    for key, err in report.errors.items():
        say(f"\n{key}: CRASHED\n{err}")
