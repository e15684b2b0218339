"""How funnel sets Python's cyclic garbage collector: less often than Python's defaults.

A run makes many short-lived containers (rows, dicts, tuples: an import of
100,000 rows makes millions), and with Python's default thresholds (700, 10,
10) the collector ran every 700 new ones, walking an ever larger heap again
and again: measured, about a fifth of an import's CPU
(`benchmarks/big_list.py`), and a share of every email's. Most of what a run
makes is freed by reference counting the moment it is no longer used; the
collector is only for reference cycles, and running it after 50,000 new
containers instead of 700 leaves memory as it was (the import's peak stayed at
148 MB).

- The `funnel` program sets these thresholds for its whole process at start
  (`use_fewer_collections`), so loading its libraries benefits too.
- Every run is inside `fewer_collections`, which also freezes what was loaded
  before it (modules, the configuration, the compiled templates: they live as
  long as the process) out of the collector's view, and gives a caller that
  runs in its own process (`funnel serve`, the tests) its settings back.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: new containers between collections of the youngest generation, and collections between older ones
THRESHOLDS = (50_000, 50, 100)


def use_fewer_collections() -> None:
    """For the whole process (the `funnel` program, at start)."""
    gc.set_threshold(*THRESHOLDS)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect less often while inside, with what exists now frozen; as before after."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
