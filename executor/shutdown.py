"""Stopping a run on SIGINT/SIGTERM: drain, give in-flight calls a grace period, then cancel.

The first signal stops new work (the runner's `drain`): steps that have not reached their
provider call are cancelled and no step starts; calls already in flight may finish, their answers
committed, until the grace period ends or a second signal comes, and then whatever is left is
cancelled (`stop_now`). The signals are received inside the event loop, so every stop happens at
an await point, never in the middle of a commit or a file write.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Protocol

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

DEFAULT_GRACE_S = 10.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Drainable(Protocol):
    def drain(self) -> int:
        """Stop new work; return how many provider calls are in flight."""
        ...

    def stop_now(self) -> int:
        """Cancel what is left; return how many provider calls were cancelled."""
        ...


@dataclass
class StopReport:
    """What a stop did, for job.interrupted and the closing line."""

    signal: str
    grace_s: float
    calls_running: int = 0  # in flight when the first signal came
    calls_cancelled: int = 0  # cut off by the grace deadline or a second signal
    second_signal: str | None = None

    @property
    def calls_finished(self) -> int:
        return self.calls_running - self.calls_cancelled


def first_notice(report: StopReport) -> str:
    """The line printed on the first signal."""
    calls = report.calls_running
    plural = "call" if calls == 1 else "calls"
    if calls == 0:
        return f"stopping ({report.signal}): no call is running; no new step starts"
    if report.grace_s <= 0:
        return f"stopping ({report.signal}): cancelling {calls} running {plural} (grace 0)"
    return (
        f"stopping ({report.signal}): waiting up to {report.grace_s:g}s for {calls} running "
        f"{plural} (Ctrl-C again to stop now)"
    )


class Shutdown:
    """Watches for SIGINT/SIGTERM while a run is under way; `report` is set once one came."""

    def __init__(self, grace_s: float, say: Callable[[str], None]) -> None:
        if grace_s < 0:
            raise ValueError("grace must not be negative")
        self.grace_s = grace_s
        self.say = say
        self.report: StopReport | None = None

    async def watch(
        self, target: Drainable, *, task_status: TaskStatus[None] | None = None
    ) -> None:
        """Run (in the run's task group) until cancelled when the run ends."""
        with signal_receiver(SIGNALS) as signals:
            if task_status is not None:
                task_status.started()  # the handlers are in place before any step starts
            await self.follow(signals, target)

    async def follow(self, signals: AsyncIterator[int], target: Drainable) -> None:
        """`watch` with the signal receiver opened by the caller (before it starts any step);
        runs until cancelled when the run ends."""
        import anyio  # here, not at the top: the API imports DEFAULT_GRACE_S from this module

        async for signum in signals:
            report = self.report = StopReport(signal.Signals(signum).name, self.grace_s)
            break
        else:  # pragma: no cover - the receiver never ends by itself
            return
        report.calls_running = target.drain()
        self.say(first_notice(report))
        if report.calls_running and self.grace_s > 0:
            with anyio.move_on_after(self.grace_s):
                async for signum in signals:
                    report.second_signal = signal.Signals(signum).name
                    break
        report.calls_cancelled = target.stop_now()
        async for _ in signals:  # more signals while the stop is recorded change nothing
            pass


@contextmanager
def signal_receiver(signals: tuple[signal.Signals, ...]) -> Iterator[AsyncIterator[int]]:
    """The signals' numbers as they come, received in the running event loop (main thread only);
    the handlers before are put back on exit.

    anyio.open_signal_receiver goes through asyncio's add_signal_handler, which builds
    signal.valid_signals() (an enum set of every signal, ~0.15 ms) for each signal it is given:
    a tenth of a short job's time before its first step. A plain handler that hands the number
    to the loop (waking it through its self-pipe) receives them the same way.

    The loop's self-pipe is also the wakeup fd, as add_signal_handler makes it: a signal that
    the kernel hands to another thread (one of anyio's worker threads) then still wakes the
    main thread out of its select at once, for the handler to run. The byte written there is
    the signal's number, which the loop drops (no asyncio handler is registered for it).
    """
    import asyncio

    import anyio

    loop = asyncio.get_running_loop()
    send, receive = anyio.create_memory_object_stream[int](math.inf)

    def deliver(signum: int) -> None:
        try:
            send.send_nowait(signum)
        except anyio.ClosedResourceError:  # came as the receiver closed: the run is over
            pass

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(deliver, signum)

    previous: dict[signal.Signals, Any] = {}
    self_pipe = getattr(loop, "_csock", None)  # asyncio's own; absent in other loops
    wakeup_before: int | None = None
    try:
        if self_pipe is not None:
            wakeup_before = signal.set_wakeup_fd(self_pipe.fileno(), warn_on_full_buffer=False)
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        with receive:
            yield receive
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
        if wakeup_before is not None:
            signal.set_wakeup_fd(wakeup_before)
        send.close()


@contextmanager
def signals_ignored() -> Iterator[None]:
    """While the stop is recorded (one short append): one more Ctrl-C must not cut it off.
    Off the main thread (the API's run_in_loop, a worker in a thread) no handler can be set,
    and no signal is delivered there either: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
