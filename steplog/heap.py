"""The cyclic GC while steplog builds or holds many objects: a run, a fold, a parse.

Each allocates objects by the dozen a step or an event. With the default thresholds the
collector keeps walking the whole heap (the imports, the pipeline, the state built so far): that
cost a run ≈ 15 % of each step, and a 10,000-event fold in a fresh process ≈ 35 % of its time
(bench/README.md). Two settings, both put back as they were found:

* `long_lived_heap()`, around a run's event loop: the young generations are collected first
  (so no garbage made before the run is frozen with it), then what exists is frozen out of the
  collector's walks, and the young generation is collected less often. Collection goes on during
  the run, so its own cyclic garbage is freed as it goes.
* `gc_paused()`, around a call that returns when its work is done (a fold, a parse, a plan, a
  verify): no collection at all. The objects it leaves stay in the young generation, so a
  long-lived process collects its garbage as before; a freeze for each call would move
  everything young, garbage and all, to the oldest generation every time. It pauses on the main
  thread only (the CLI's): on other threads (the web UI's pool, a caller's) it does nothing,
  since overlapping pauses on busy threads would keep the collector off nearly all the time.

Both are process-wide, so overlapping uses (a fold inside a run, runs on two threads) share one
change: the first makes it, the last puts it back. A change left half-undone (a signal landing
between two of the restoring calls) is redone and undone by the next use, not taken for the
process's own setting. A `gc.freeze()` the caller made before a run is left alone; one made
during it, or a `gc.disable()` made during a pause, is undone with the run's or the pause's.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# generation 0 collected every 10,000 net allocations instead of 700; the full walk rarely
THRESHOLDS = (10_000, 50, 1_000)

_lock = threading.Lock()


class _HeldSetting:
    """One process-wide GC setting, changed while anyone holds it."""

    def __init__(
        self,
        read: Callable[[], Any],
        change: Callable[[Any], None],
        restore: Callable[[Any], None],
    ) -> None:
        self._read, self._change, self._restore = read, change, restore
        self.holders: set[object] = set()
        self.saved: Any = None
        self.changed = False  # the setting is ours: made and not (completely) put back yet

    @contextmanager
    def held(self) -> Iterator[None]:
        token = object()
        try:
            with _lock:
                if not self.holders:
                    if not self.changed:  # else a restore was cut short: `saved` is still true
                        self.saved = self._read()
                        self.changed = True
                    self._change(self.saved)
                self.holders.add(token)
            yield
        finally:
            # first: a signal while this waits for the lock loses no holder
            self.holders.discard(token)
            with _lock:
                if not self.holders and self.changed:
                    self._restore(self.saved)
                    self.changed = False


def _freeze(saved: tuple[tuple[int, int, int], bool]) -> None:
    if saved[1]:
        gc.collect(1)  # the young garbage freed now, not frozen and then thawed into the oldest
        gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def _thaw(saved: tuple[tuple[int, int, int], bool]) -> None:
    gc.set_threshold(*saved[0])
    if saved[1]:
        gc.unfreeze()


# saved: (the thresholds, whether we freeze: not when the process had frozen objects already)
_RUN = _HeldSetting(lambda: (gc.get_threshold(), gc.get_freeze_count() == 0), _freeze, _thaw)
_PAUSE = _HeldSetting(
    gc.isenabled, lambda saved: gc.disable(), lambda saved: gc.enable() if saved else None
)


def long_lived_heap() -> Any:
    """The run's setting (a context manager, or a decorator): see the module's text."""
    return _RUN.held()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No collection for the block on the main thread (a context manager, or a decorator: the
    thread is the caller's at each call)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _PAUSE.held():
        yield
