"""p99 request latency of a real ASGI service: no telemetry, tracewriter, the OpenTelemetry SDK.

What a user of a latency-sensitive service asks first. The service is a plain ASGI app run by
uvicorn in a process of its own; each request plays a RAG request: the user's message, a
retrieval span, a fake LLM call (``await asyncio.sleep``), the LLM call recorded, the
assistant's message, the trace ended — seven tracewriter events, or three OpenTelemetry spans
with the same attributes (BatchSpanProcessor, no-op exporter). The load comes from this
process, open loop: request ``i`` is due at ``i / rate`` seconds whatever happened before, and
its latency counts from when it was due (so a stalled server is not hidden by the client
waiting for it), over a pool of keep-alive HTTP/1.1 connections that grows when all are busy.

``python -m benchmarks.asgi serve --variant {none,tracewriter,otel} --port P [--dsn DSN]`` runs
one server (``make bench`` starts them itself).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import ROOT, Figure, Report, percentile, ratio, say, verdict
from benchmarks._table import print_table

VARIANTS = ("none", "tracewriter", "otel")
_LLM_SECONDS = 0.02  # the fake LLM call every request awaits
_BODY = b'{"answer":"retrieval-augmented generation"}'


# --- the service -------------------------------------------------------------------------------


def make_app(variant: str, dsn: str | None) -> Any:
    """The ASGI app for ``variant``, with lifespan start-up and shutdown of its telemetry."""
    svc: Any = None
    tracer: Any = None
    processor: Any = None
    counter = 0

    async def startup() -> None:
        nonlocal svc, tracer, processor
        if variant == "tracewriter":
            from tracewriter import ObservabilityService  # noqa: PLC0415

            svc = ObservabilityService(dsn)
            await svc.start()
        elif variant == "otel":
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
                BatchSpanProcessor,
                SpanExporter,
                SpanExportResult,
            )

            class Noop(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            provider = TracerProvider(shutdown_on_exit=False)
            processor = BatchSpanProcessor(Noop())
            provider.add_span_processor(processor)
            tracer = provider.get_tracer("bench")

    async def shutdown() -> None:
        if svc is not None:
            await svc.close()
        if processor is not None:
            processor.shutdown()

    async def rag_request() -> None:
        nonlocal counter
        counter += 1
        user, kb = f"user-{counter % 64:04d}", f"kb-{counter % 8:02d}"
        if svc is not None:
            ctx = svc.start_trace("chat.request", user_id=user, session_id=user, kb_id=kb)
            svc.log_chat_message(ctx, role="user", content="What is RAG?", token_count=4)
            async with svc.span(ctx, "retrieve", "retrieval", {"top_k": 8}):
                pass
            await asyncio.sleep(_LLM_SECONDS)
            svc.log_llm_call(
                ctx,
                model="gpt-4o",
                provider="openai",
                input_tokens=812,
                output_tokens=95,
                duration_ms=_LLM_SECONDS * 1000,
                metadata={"request": counter, "temperature": 0.2},
            )
            svc.log_chat_message(ctx, role="assistant", content=_BODY.decode(), token_count=12)
            svc.end_trace(ctx)
        elif tracer is not None:
            with tracer.start_as_current_span(
                "chat.request", attributes={"user.id": user, "kb.id": kb}
            ):
                with tracer.start_as_current_span("retrieve", attributes={"top_k": 8}):
                    pass
                await asyncio.sleep(_LLM_SECONDS)
                with tracer.start_as_current_span(
                    "llm.call",
                    attributes={
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.system": "openai",
                        "gen_ai.usage.input_tokens": 812,
                        "gen_ai.usage.output_tokens": 95,
                        "request": counter,
                    },
                ):
                    pass
        else:
            await asyncio.sleep(_LLM_SECONDS)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await rag_request()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _BODY})

    return app


def serve(variant: str, port: int, dsn: str | None) -> None:
    import uvicorn  # noqa: PLC0415

    uvicorn.run(
        make_app(variant, dsn),
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        # The client's pool keeps connections it rarely needs; uvicorn's default 5 s would
        # close them under it and count as errors.
        timeout_keep_alive=300,
    )


# --- the load ----------------------------------------------------------------------------------

_REQUEST = b"GET /chat HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    reader, writer = conn
    writer.write(_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


async def open_loop(port: int, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``warmup + seconds``; latencies after the warm-up, in ms."""
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    latencies: list[float] = []
    errors = 0
    total = int((warmup + seconds) * rate)
    began = time.perf_counter() + 0.05

    async def request(i: int, due: float) -> None:
        nonlocal errors
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
                opened.append(conn[1])
            await _one(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return
        if due - began >= warmup:
            latencies.append((time.perf_counter() - due) * 1000)
        idle.append(conn)

    tasks = []
    for i in range(total):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(request(i, due)))
    await asyncio.gather(*tasks)
    for writer in opened:
        writer.close()
    return {
        "requests": len(latencies),
        "errors": errors,
        "connections": len(opened),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start listening")


def measure(
    variant: str, dsn: str, *, rate: float, seconds: float, warmup: float
) -> dict[str, Any]:
    """Start the server for ``variant``, drive it open loop, stop it; the latencies."""
    port = _free_port()
    cmd = [sys.executable, "-m", "benchmarks.asgi", "serve", "--variant", variant]
    cmd += ["--port", str(port), "--dsn", dsn]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEWRITER_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        _wait_listening(port, proc)
        return asyncio.run(open_loop(port, rate, seconds, warmup))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(report: Report, dsn: str, *, rate: float, seconds: float, warmup: float) -> None:
    section = f"ASGI service under open-loop load ({rate:,.0f} requests/s, uvicorn)"
    try:
        import uvicorn  # noqa: F401, PLC0415
    except ImportError:
        report.add(
            Figure("asgi", section, "ASGI p99", None, "", status="SKIP", note="pip install uvicorn")
        )
        return
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        say(f"  ASGI service: {variant} ...")
        results[variant] = measure(variant, dsn, rate=rate, seconds=seconds, warmup=warmup)
    report.details["asgi"] = results
    floor = results["none"]
    labels = {
        "none": "no telemetry (floor)",
        "tracewriter": "tracewriter (7 events a request, into PostgreSQL)",
        "otel": "OpenTelemetry SDK (3 spans, BatchSpanProcessor, no-op exporter)",
    }
    for variant, r in results.items():
        note = (
            f"{r['requests']:,} requests measured, {r['errors']} errors, "
            f"{r['connections']} connections; p50 {r['p50_ms']:.1f} ms, max {r['max_ms']:.1f} ms"
        )
        value = ratio(r["p99_ms"], floor["p99_ms"])
        targeted = variant == "tracewriter"
        report.add(
            Figure(
                f"asgi_{variant}_p99",
                section,
                f"{labels[variant]}: p99 request latency",
                r["p99_ms"],
                "ms",
                value,
                "floor",
                "≤ 1.1 × floor" if targeted else "",
                verdict(value <= 1.1 if value is not None else None) if targeted else "—",
                note,
            )
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("serve", help="run one variant's server")
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dsn")
    p = sub.add_parser("measure", help="measure the three variants and print them")
    p.add_argument("dsn")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.what == "serve":
        from benchmarks._common import quiet_logging  # noqa: PLC0415

        quiet_logging()
        serve(args.variant, args.port, args.dsn)
        return

    report = Report()
    run(report, args.dsn, rate=args.rate, seconds=args.seconds, warmup=2.0)
    print_table(report)


if __name__ == "__main__":
    main()
