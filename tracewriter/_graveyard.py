"""Freeing the writer's spent events and rows right after a collection, not in between.

Owns one thing: when the objects the flusher is done with are freed. CPython starts a young
collection when GC-tracked allocations *minus deallocations* pass a threshold (700). In a
steady stream the flusher frees old events and rows about as fast as the application records
new ones, so the counter hardly moves and the young generation grows to thousands of
just-recorded events before it is walked: measured at 20,000 events/s, young collections of
~3,300 objects taking 3-6 ms each (the event-loop lag's p99). Kept here until the next
collection ends, the same objects are freed when the counter has just been reset to zero, so
their frees no longer hold collections back: the young generation stays near the threshold
(~1,000 objects, ~0.7 ms) and every object is still walked once.

The cost: what the flusher is done with lives until the next collection ends (a few tens of
milliseconds under load), never longer than ``_MAX_AGE`` seconds, and is dropped at once when
the collector is disabled (no collection would come). A callback in ``gc.callbacks`` empties
the graveyard when any collection ends; it is added on first use (again if removed), once.
"""

from __future__ import annotations

import gc
from time import monotonic
from typing import Final

__all__ = ["buried", "bury"]

# Beyond this a collection is not coming soon (an idle process, a huge threshold): free anyway.
_MAX_AGE: Final = 2.0

_graveyard: list[object] = []
_since = [0.0]  # when the oldest object in the graveyard was buried


def _after_collection(phase: str, info: dict[str, int]) -> None:
    # The counter was reset when this collection began: these frees cannot hold the next back.
    if phase == "stop" and _graveyard:
        _graveyard.clear()


def bury(spent: object) -> None:
    """Keep ``spent`` (a container of events or rows the writer is done with) until the next
    collection ends; drop it now when the collector is off or the graveyard is old."""
    if not gc.isenabled():
        _graveyard.clear()
        return
    if _after_collection not in gc.callbacks:  # first use, or someone emptied the list
        gc.callbacks.append(_after_collection)
    if not _graveyard:
        _since[0] = monotonic()
    elif monotonic() - _since[0] > _MAX_AGE:
        _graveyard.clear()
        _since[0] = monotonic()
    _graveyard.append(spent)


def buried() -> int:
    """How many containers wait for the next collection (for tests)."""
    return len(_graveyard)
