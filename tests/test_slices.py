"""The writer's slices of CPU work give the GIL away on its own thread, and only there."""

from __future__ import annotations

import threading

import pytest

from tracewriter import ObservabilityService, _slices

EVENTS = 300  # ten build slices of 32 events; COPYs of 8 rows between pauses


@pytest.fixture
def gave(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads whose pauses handed the GIL over (the real handover runs)."""
    names: list[str] = []
    give_gil = _slices._give_gil

    def noting() -> None:
        names.append(threading.current_thread().name)
        give_gil()

    monkeypatch.setattr(_slices, "_give_gil", noting)
    return names


def _record(svc: ObservabilityService) -> None:
    for i in range(EVENTS):
        svc.log_llm_call(None, model="small", input_tokens=i, output_tokens=1)


def test_a_writer_on_its_own_thread_hands_the_gil_over_between_slices(
    db_dsn: str, gave: list[str]
) -> None:
    with ObservabilityService(db_dsn, thread_mode=True, copy_yield_rows=8) as svc:
        _record(svc)
        assert svc.flush_sync(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.written == EVENTS and stats.balances()
    assert gave, "no slice of the thread-mode writer handed the GIL over"
    assert threading.main_thread().name not in gave


async def test_a_writer_on_the_applications_loop_keeps_the_gil(
    db_dsn: str, gave: list[str]
) -> None:
    svc = ObservabilityService(db_dsn, copy_yield_rows=8)
    await svc.start()
    _record(svc)
    assert await svc.flush(timeout=30)
    await svc.close()
    stats = svc.stats()
    assert stats is not None and stats.written == EVENTS and stats.balances()
    assert gave == []  # the same slices, paused on the application's loop: nothing handed over
