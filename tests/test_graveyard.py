"""What the flusher is done with is freed when a collection ends, not one object at a time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tracewriter import _graveyard
from tracewriter._graveyard import buried, bury


class _Spent:
    """Stands for a batch of rows: something the test can watch die through a weak reference."""


@pytest.fixture(autouse=True)
def _empty_graveyard() -> Iterator[None]:
    _graveyard._graveyard.clear()
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    _graveyard._graveyard.clear()


def test_buried_objects_live_until_the_next_collection_ends() -> None:
    spent = _Spent()
    alive = weakref.ref(spent)
    bury(spent)
    del spent
    assert alive() is not None and buried() == 1
    gc.collect(0)  # any collection, the young one included
    assert alive() is None and buried() == 0


def test_with_the_collector_disabled_nothing_is_kept() -> None:
    earlier = _Spent()
    kept = weakref.ref(earlier)
    bury(earlier)
    del earlier
    gc.disable()  # no collection will come: keeping anything would keep it for good
    spent = _Spent()
    alive = weakref.ref(spent)
    bury(spent)
    del spent
    assert alive() is None and kept() is None and buried() == 0


def test_a_graveyard_older_than_its_limit_is_emptied_by_the_next_burial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(_graveyard, "monotonic", lambda: clock[0])
    gc.disable()  # keep the collector from emptying it first
    monkeypatch.setattr(_graveyard.gc, "isenabled", lambda: True)
    old = _Spent()
    gone = weakref.ref(old)
    bury(old)
    del old
    clock[0] += _graveyard._MAX_AGE / 2
    bury(_Spent())
    assert gone() is not None and buried() == 2
    clock[0] += _graveyard._MAX_AGE
    bury(_Spent())
    assert gone() is None and buried() == 1
