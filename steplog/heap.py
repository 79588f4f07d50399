"""The cyclic GC while steplog holds a job in memory: folding its log, or running it.

Both allocate an object or more per event. With the default thresholds the collector keeps
walking the whole heap (the imports, the pipeline, the state built so far), which cost a run
≈ 15 % of each step and a 10,000-event fold in a fresh process 40 % of its time (bench/). So
what exists when the work starts is frozen out of the collector's walks, and the young
generation is collected less often; both are put back as they were when the work ends.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

# generation 0 collected every 10,000 net allocations instead of 700; the full walk rarely
THRESHOLDS = (10_000, 50, 1_000)

_lock = threading.Lock()
_depth = 0  # uses open in this process (a fold inside a run, jobs on two threads)
_saved: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def long_lived_heap() -> Iterator[None]:
    """Keep the cyclic GC off the objects that exist now, for the block's duration.

    Nested and concurrent uses share the outermost one: it freezes and sets the thresholds,
    and the last to leave unfreezes and restores them, so the process ends as it began.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*THRESHOLDS)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()
