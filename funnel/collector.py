"""How funnel sets Python's cyclic garbage collector: less often than Python's defaults.

A run makes many short-lived containers (an import makes millions of rows, dicts and
tuples), and at Python's default thresholds (700, 10, 10) the collector walks an ever
larger heap again and again. Reference counting frees nearly all of them anyway; the
collector is only for cycles, so running it after 50,000 new containers instead of 700
leaves memory as it was. The `funnel` program sets this for its whole process at start
(`use_fewer_collections`); every run is inside `fewer_collections`, which also freezes
what was loaded before it. Figures: docs/performance.md.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: new containers between collections of the youngest generation, and collections between older ones
THRESHOLDS = (50_000, 50, 100)


def use_fewer_collections() -> None:
    """For the whole process (the `funnel` program, at start)."""
    gc.set_threshold(*THRESHOLDS)


_lock = threading.Lock()
#: runs inside `fewer_collections` now, and what the first of them found (restored by the last)
_depth = 0
_found: tuple[tuple[int, int, int], bool] = ((700, 10, 10), False)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect less often while inside, with what exists now frozen; as before after.

    Runs overlapping in threads of one process share one collector: the first
    in sets it and the last out restores it. A caller that froze objects of its
    own keeps them frozen (nothing more is frozen then, nor unfrozen after).
    """
    global _depth, _found
    with _lock:
        if _depth == 0:
            freeze = gc.get_freeze_count() == 0
            _found = (gc.get_threshold(), freeze)
            if freeze:
                gc.freeze()
            gc.set_threshold(*THRESHOLDS)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                thresholds, froze = _found
                gc.set_threshold(*thresholds)
                if froze:
                    gc.unfreeze()
