"""Drawing what the read commands fetched, with ``rich``: the rendering half of read-back.

Owns how a trace looks as a waterfall tree (one bar per span on the trace's time axis, its
start offset, duration, model, tokens or error) and how the per-model, per-span-type and
per-document-stage latency tables look. It takes the plain data of
:mod:`tracewriter.cli._query` and does no I/O; the demo draws its read-back with it too.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from tracewriter.cli._query import LatencyRow, SpanRow, Stats, TraceTree

__all__ = ["render_stats", "render_trace"]

# --- rendering: a trace as a waterfall -----------------------------------------------------------

_TYPE_STYLES: Final[dict[str, str]] = {
    "llm": "magenta",
    "retrieval": "cyan",
    "embedding": "blue",
    "rerank": "green",
    "tool": "yellow",
    "chain": "white",
    "document": "bright_cyan",
    "message": "bright_black",
}
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"
_GUIDE_WIDTH: Final = 4  # rich's tree guides are four cells per level
_NAME_MAX: Final = 30


@dataclass(slots=True)
class _Line:
    depth: int
    name: str
    kind: str
    offset_ms: float
    duration_ms: float | None
    status: str
    detail: str
    children: list[_Line] = field(default_factory=list)


def _ms(delta: _dt.timedelta) -> float:
    return delta.total_seconds() * 1000.0


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def _span_detail(s: SpanRow) -> str:
    parts: list[str] = []
    if s.model:
        parts.append(f"{s.model}" + (f" ({s.provider})" if s.provider else ""))
    if s.input_tokens is not None or s.output_tokens is not None:
        tokens = f"{s.input_tokens or 0:,}→{s.output_tokens or 0:,} tok"
        if s.cached_input_tokens:
            tokens += f", {s.cached_input_tokens:,} cached"
        if s.reasoning_tokens:
            tokens += f", {s.reasoning_tokens:,} reasoning"
        parts.append(tokens)
    if s.status == "error":
        err = ": ".join(x for x in (s.error_type, s.error_message) if x) or "error"
        parts.append(f"✗ {err}")
    elif s.status == "open":
        parts.append("(still open)")
    return "  ".join(parts)


def _build_lines(tree: TraceTree) -> tuple[_Line, float]:
    """The trace as nested lines, with offsets from the trace's start; and the window length."""
    t0 = tree.trace.timestamp
    root = _Line(
        0,
        tree.trace.name or "trace",
        "trace",
        0.0,
        tree.trace.duration_ms,
        tree.trace.status,
        "",
    )
    by_span: dict[str, _Line] = {tree.trace.span_id: root}
    lines_of: list[tuple[SpanRow, _Line]] = []
    for s in tree.spans:
        line = _Line(
            0,
            s.name or s.span_type or "span",
            s.span_type or "span",
            _ms(s.timestamp - t0),
            s.duration_ms,
            s.status,
            _span_detail(s),
        )
        by_span[s.span_id] = line
        lines_of.append((s, line))
    for s, line in lines_of:
        parent = by_span.get(s.parent_span_id or "", root)
        (parent if parent is not line else root).children.append(line)
    for m in tree.messages:
        text = " ".join(m.content_preview.split())
        detail = (f"{m.token_count} tok  " if m.token_count is not None else "") + f"“{text}”"
        by_span.get(m.span_id or "", root).children.append(
            _Line(0, f"{m.role} message", "message", _ms(m.timestamp - t0), None, "ok", detail)
        )
    for d in tree.documents:
        end = _ms(d.timestamp - t0)
        detail = f"{d.document_id}" + (f"  {d.chunk_count} chunks" if d.chunk_count else "")
        if d.status == "error":
            detail += f"  ✗ {d.error_message or 'error'}"
        start = end - d.duration_ms if d.duration_ms is not None else end
        root.children.append(
            _Line(0, d.event_type, "document", start, d.duration_ms, d.status, detail)
        )

    def settle(line: _Line, depth: int) -> None:
        line.depth = depth
        line.children.sort(key=lambda c: c.offset_ms)
        for child in line.children:
            settle(child, depth + 1)

    settle(root, 0)
    everything = list(_walk(root))
    begin = min(0.0, *(x.offset_ms for x in everything))
    if begin < 0:  # a child recorded as starting before the trace: shift the whole picture
        for x in everything:
            x.offset_ms -= begin
    window = max(
        (x.offset_ms + (x.duration_ms or 0.0) for x in everything),
        default=0.0,
    )
    return root, max(window, 1e-3)


def _walk(line: _Line) -> Iterable[_Line]:
    yield line
    for child in line.children:
        yield from _walk(child)


def _bar(offset: float, duration: float | None, window: float, width: int) -> str:
    """A bar of ``width`` cells: blank up to ``offset``, then ``duration`` in eighths of a cell."""
    start = min(int(offset / window * width), width - 1)
    if duration is None:
        return (" " * start + "◆").ljust(width)
    eighths = max(1, round(duration / window * width * 8))
    full, rest = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[rest] if rest else "")
    return (" " * start + bar)[:width].ljust(width)


def render_trace(tree: TraceTree, *, width: int = 100) -> RenderableType:
    """The trace as a rich renderable: a header line and a waterfall tree.

    Each line shows the span's bar on a shared time axis (offsets from the trace start), its
    start offset and duration, and the model, tokens or error where there is one.
    """
    root, window = _build_lines(tree)
    lines = list(_walk(root))
    name_width = min(
        max(len(x.name) + _GUIDE_WIDTH * x.depth for x in lines) + 1,
        _NAME_MAX + _GUIDE_WIDTH * 3,
    )
    # name | bar | "  +offset  duration  " | details get what is left
    bar_width = max(16, min(48, width - name_width - 24 - 28))

    def label(x: _Line) -> Text:
        indent = _GUIDE_WIDTH * x.depth
        name = x.name[: max(name_width - indent - 1, 4)].ljust(name_width - indent)
        text = Text(no_wrap=True, overflow="ellipsis")
        failed = x.status == "error"
        text.append(name, style="bold red" if failed else ("bold" if x.depth == 0 else ""))
        style = "red" if failed else _TYPE_STYLES.get(x.kind, "white")
        text.append(_bar(x.offset_ms, x.duration_ms, window, bar_width), style=style)
        text.append(f" {'+' + _fmt_ms(x.offset_ms):>10} ", style="dim")
        text.append(f"{_fmt_ms(x.duration_ms):>8}", style="bold" if x.depth == 0 else "")
        if x.detail:
            text.append("  " + x.detail, style="red" if failed else "dim")
        return text

    def grow(node: Tree, x: _Line) -> None:
        for child in x.children:
            grow(node.add(label(child)), child)

    top = Tree(label(root), guide_style="bright_black")
    grow(top, root)

    t = tree.trace
    header = Text()
    header.append("trace ", style="bold")
    header.append(t.trace_id, style="bold cyan")
    status_style = {"ok": "green", "error": "bold red"}.get(t.status, "yellow")
    header.append("  status ", style="dim")
    header.append(t.status, style=status_style)
    header.append(f"  {_fmt_ms(t.duration_ms)}", style="bold")
    who = "  ".join(
        f"{k} {v}"
        for k, v in (
            ("started", t.timestamp.isoformat(timespec="milliseconds")),
            ("user", t.user_id),
            ("session", t.session_id),
            ("kb", t.kb_id),
        )
        if v
    )
    parts: list[RenderableType] = [header, Text(who, style="dim")]
    if t.status == "error" and (t.error_type or t.error_message):
        err = ": ".join(x for x in (t.error_type, t.error_message) if x)
        parts.append(Text(f"✗ {err}", style="red"))
    span_count = len(tree.spans)
    parts.append(
        Text(
            f"{span_count} span{'s' * (span_count != 1)}, {len(tree.messages)} messages"
            + (f", {len(tree.documents)} document events" if tree.documents else ""),
            style="dim",
        )
    )
    parts.append(top)
    return Group(*parts)


# --- rendering: statistics -------------------------------------------------------------------


def _since_text(since: _dt.timedelta) -> str:
    seconds = int(since.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _number_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _compact(count: int) -> str:
    if count < 100_000:
        return f"{count:,}"
    if count < 10_000_000:
        return f"{count / 1000:,.0f}k"
    return f"{count / 1_000_000:,.1f}M"


def _latency_table(title: str, key: str, rows: Sequence[LatencyRow], *, tokens: bool) -> Table:
    # No vertical rules and units in the headers: the model table fits 80 columns.
    table = Table(
        title=f"{title} · latency in ms",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),  # with the box's blank column rule: two spaces between columns
    )
    table.add_column(key, no_wrap=True)
    table.add_column("calls", justify="right")
    table.add_column("err", justify="right")
    if tokens:
        table.add_column("tok in", justify="right")
        table.add_column("tok out", justify="right")
        table.add_column("cost $", justify="right")
    for name in ("p50", "p95", "p99", "max"):
        table.add_column(name, justify="right")
    for r in rows:
        cells: list[RenderableType] = [
            r.key or "(none)",
            f"{r.calls:,}",
            Text(f"{r.errors:,}", style="red" if r.errors else ""),
        ]
        if tokens:
            cells += [_compact(r.input_tokens), _compact(r.output_tokens), _usd(r.cost_usd)]
        cells += [_number_ms(v) for v in (r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms)]
        table.add_row(*cells)
    return table


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


def render_stats(stats: Stats, *, window: str | None = None) -> RenderableType:
    """The per-model, per-span-type and per-document-stage tables of ``stats``.

    ``window`` names the time span in the titles (default: "last 1h" and the like).
    """
    window = window or f"last {_since_text(stats.since)}"
    if stats.empty:
        return Text(f"nothing recorded ({window})", style="yellow")
    parts: list[RenderableType] = []
    if stats.models:
        parts.append(
            _latency_table(f"LLM calls by model ({window})", "model", stats.models,
                           tokens=True)
        )  # fmt: skip
    if stats.knowledge_bases:
        parts.append(
            _latency_table(f"LLM calls by knowledge base ({window})", "knowledge base",
                           stats.knowledge_bases, tokens=True)
        )  # fmt: skip
    if stats.span_types:
        parts.append(
            _latency_table(f"Spans by type ({window})", "span type", stats.span_types,
                           tokens=False)
        )  # fmt: skip
    if stats.document_stages:
        parts.append(
            _latency_table(f"Document stages ({window})", "stage", stats.document_stages,
                           tokens=False)
        )  # fmt: skip
    parts.append(
        Text(
            "Percentiles come from the sketches in metrics_aggregates: within 1 % of the exact "
            "value. Cost counts the calls that could be priced (— where none could).",
            style="dim",
        )
    )
    return Group(*parts)
