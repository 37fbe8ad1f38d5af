"""``python -m benchmarks.citus [--smoke] [--shards 8,2,32]``: writing through a Citus coordinator.

Measures, on the cluster at ``TRACEWRITER_CITUS_DSN`` (a coordinator's superuser URI; default
the one ``../shared/citus/setup.sh`` starts), the workload's span rows by binary COPY into
``observability.spans`` distributed by trace_id, once per shard count, and tracewriter end to
end through the coordinator at the default shard count — each against the same COPY into a
plain local database on the coordinator's own server (the ceiling: same build, same machine,
no distribution). Prints every figure with its ratio to that ceiling and writes
``benchmarks/results/citus.json`` (``citus-smoke.json`` with ``--smoke``). ``make bench-citus``
runs it.

Each database is made distributed the way Citus needs it: created on the coordinator and on
every worker, the extension created in each, the workers registered in it, then migrated with
``tracewriter.shard_count`` set for it. On a machine where all nodes share the same cores the
figures are the cost of distribution, not its scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks._common import RESULTS_DIR, machine, quiet_logging, say
from benchmarks._workload import SPANS_PER_TRACE, span_rows
from benchmarks.throughput import copy_ceiling, end_to_end
from tracewriter._config import redact_dsn
from tracewriter.migrate import apply_migrations

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5440/postgres"


def _node(dsn: str, *, host: str | None = None, port: int | None = None, db: str = "") -> str:
    parts = urlsplit(dsn)
    if host is not None:
        user = parts.netloc.rpartition("@")[0]
        parts = parts._replace(netloc=f"{user}@{host}:{port}" if user else f"{host}:{port}")
    if db:
        parts = parts._replace(path="/" + db)
    return urlunsplit(parts)


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _nodes(coordinator: str) -> list[str]:
    """Maintenance DSNs of the coordinator and its active workers."""
    conn = await asyncpg.connect(coordinator)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
            raise SystemExit(
                f"{redact_dsn(coordinator)}: no citus extension; not a Citus coordinator?"
            )
        rows = await conn.fetch(
            "SELECT nodename, nodeport FROM pg_dist_node "
            "WHERE isactive AND noderole = 'primary' AND groupid <> 0 ORDER BY nodeport"
        )
    finally:
        await conn.close()
    if not rows:
        raise SystemExit(f"{redact_dsn(coordinator)}: no active workers registered")
    return [coordinator, *(_node(coordinator, host=r[0], port=r[1]) for r in rows)]


async def _create(nodes: list[str], name: str, shards: int | None) -> str:
    """A migrated database ``name``: distributed over ``nodes`` with ``shards``, or local."""
    coordinator = nodes[0]
    if shards is None:
        await _execute(coordinator, f'CREATE DATABASE "{name}"')
    else:
        for node in nodes:
            await _execute(node, f'CREATE DATABASE "{name}"')
            await _execute(_node(node, db=name), "CREATE EXTENSION citus")
        c = urlsplit(coordinator)
        await _execute(
            _node(coordinator, db=name),
            f"SELECT citus_set_coordinator_host('{c.hostname}', {c.port or 5432})",
            *(
                f"SELECT citus_add_node('{urlsplit(w).hostname}', {urlsplit(w).port})"
                for w in nodes[1:]
            ),
            f"ALTER DATABASE \"{name}\" SET tracewriter.shard_count = '{shards}'",
        )
    dsn = _node(coordinator, db=name)
    await asyncio.to_thread(apply_migrations, dsn)
    return dsn


async def _drop(nodes: list[str], name: str) -> None:
    for node in nodes:
        await _execute(node, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def measure(coordinator: str, shard_counts: list[int], traces: int) -> dict[str, Any]:
    nodes = await _nodes(coordinator)
    rows = span_rows(traces)
    say(f"{len(rows):,} span rows; coordinator and {len(nodes) - 1} workers")
    results: dict[str, Any] = {"rows": len(rows), "workers": len(nodes) - 1, "copy": {}}
    for shards in [None, *shard_counts]:
        name = f"tracewriter_citus_bench_{uuid.uuid4().hex[:8]}"
        label = "local" if shards is None else f"{shards} shards"
        try:
            dsn = await _create(nodes, name, shards)
            copy = await copy_ceiling(dsn, rows)
            results["copy"][label] = copy
            say(f"  COPY, {label}: {copy['rows_per_s']:,.0f} rows/s")
            if shards == shard_counts[0] or shards is None:
                e2e = await end_to_end(dsn, traces, {})
                results.setdefault("writer", {})[label] = e2e
                say(f"  tracewriter end to end, {label}: {e2e['rows_per_s']:,.0f} rows/s")
        finally:
            await _drop(nodes if shards is not None else nodes[:1], name)
    return results


def table(results: dict[str, Any]) -> list[str]:
    ceiling = results["copy"]["local"]["rows_per_s"]
    lines = [
        "| measurement | rows/s | vs local COPY |",
        "|---|---:|---:|",
    ]
    for label, r in results["copy"].items():
        name = "COPY into a local table (ceiling)" if label == "local" else f"COPY, {label}"
        lines.append(f"| {name} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / ceiling:.2f}× |")
    for label, r in results.get("writer", {}).items():
        lines.append(
            f"| tracewriter end to end, {label} | {r['rows_per_s']:,.0f} | "
            f"{r['rows_per_s'] / ceiling:.2f}× |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.citus", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    parser.add_argument(
        "--shards",
        default="8,2,32",
        help="comma-separated shard counts to compare (default 8,2,32; the first also runs "
        "the writer end to end; 8 is the migration's default)",
    )
    args = parser.parse_args(argv)
    shard_counts = [int(s) for s in args.shards.split(",") if s.strip()]
    if args.smoke:
        shard_counts = shard_counts[:1]
    traces = 300 if args.smoke else 25_000
    coordinator = os.environ.get("TRACEWRITER_CITUS_DSN", DEFAULT_DSN)
    quiet_logging()
    results = asyncio.run(measure(coordinator, shard_counts, traces))
    results["machine"] = machine()
    results["spans_per_trace"] = SPANS_PER_TRACE
    print("\n".join(table(results)))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / ("citus-smoke.json" if args.smoke else "citus.json")
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
