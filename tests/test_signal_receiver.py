"""executor.shutdown.signal_receiver: the run's SIGINT/SIGTERM, received in the event loop.

Real signals, sent to this process's own threads; every wait is bounded.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable

import anyio

from steplog.executor.shutdown import SIGNALS, signal_receiver

BOUND_S = 20  # a bound on the wait, not a timing: the signal comes at once or not at all


async def first_signal(send: Callable[[], None]) -> int | None:
    """The first signal received, or None when none came before the bound woke the loop."""
    with signal_receiver(SIGNALS) as signals:
        send()
        with anyio.move_on_after(BOUND_S) as bound:
            async for signum in signals:
                return None if bound.cancel_called else signum
    return None


def test_a_signal_to_the_main_thread_is_received():
    got = anyio.run(first_signal, lambda: signal.raise_signal(signal.SIGTERM))
    assert got == signal.SIGTERM


def test_a_signal_the_kernel_hands_to_another_thread_wakes_the_loop():
    """The loop sleeps in select with nothing to do; the signal lands on a worker thread, so
    only the wakeup fd can wake the main thread for the handler to run."""
    received = threading.Event()

    def worker() -> None:
        time.sleep(0.2)  # so that the loop is asleep in select by then (or the test proves less)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        received.wait(BOUND_S + 5)  # alive: its end would wake nobody, but keep it certain

    thread = threading.Thread(target=worker)
    try:
        got = anyio.run(first_signal, thread.start)
    finally:
        received.set()
        thread.join()
    assert got == signal.SIGINT


def test_the_handlers_and_wakeup_fd_before_are_put_back():
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    fd_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd_before)
    assert anyio.run(first_signal, lambda: signal.raise_signal(signal.SIGINT)) == signal.SIGINT
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before
    assert signal.set_wakeup_fd(fd_before) == fd_before  # not the closed loop's self-pipe
