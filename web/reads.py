"""The pages' reads, through the `Steplog` facade: blocking calls, which the routes run in the
thread pool.

One `Steplog` (one store) serves the whole app, each read holding its lock. A second SQLite
store on the same file in this process would be unsafe: opening one reads the file's header
through a file descriptor of its own, and closing that descriptor drops every POSIX lock this
process holds on the file, so another process's last close could then checkpoint and remove
the WAL under the first store's feet (seen as stale reads, then "database disk image is
malformed"). Waiting for new events polls under the lock but sleeps outside it; PostgreSQL's
wait (LISTEN on a connection of its own) runs without it.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, TypeVar

from steplog.api import Steplog
from steplog.commands.queries import check_step, event_filter
from steplog.errors import Rejected
from steplog.projections import manifest
from steplog.projections.manifest import JobState
from steplog.web import views
from steplog.web.views import BadParam

MAX_ATTEMPTS_SHOWN = 20
MAX_COMPARED = 30  # differing steps whose prompt and answer diffs the compare page shows
LIVE_ROWS = 100  # jobs a jobs-list update carries at most
T = TypeVar("T")


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def run(self: Reader, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class NotFound(LookupError):
    """An unknown job or step: the route answers 404 with this text."""


class Reader:
    def __init__(self, steplog: Steplog) -> None:
        self._sl = steplog
        self._lock = threading.RLock()

    def app(self) -> Steplog:
        """The facade; only for a caller holding the lock (a method of this class, or `call`)."""
        return self._sl

    def close(self) -> None:
        with self._lock:
            self._sl.close()

    @_locked
    def call(self, work: Callable[[Steplog], T]) -> T:
        return work(self._sl)

    @_locked
    def last_seq(self) -> int:
        return self._sl.last_seq()

    @_locked
    def status_document(self, job_id: str) -> dict[str, Any]:
        return self._sl.status_document(self.job(job_id))

    @_locked
    def jobs_changed(self, after_seq: int) -> tuple[int, list[str]]:
        return self._sl.jobs_changed(after_seq)

    def wait_for_events(self, after_seq: int, timeout: float) -> int:
        """The last seq once it is above `after_seq`, or after `timeout` seconds."""
        with self._lock:
            store = self._sl.open_store()
        if store.notifies:
            return store.wait_for_events(after_seq, timeout)
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.005
        while True:
            seq = self.last_seq()
            left = deadline - time.monotonic()
            if seq > after_seq or left <= 0:
                return seq
            time.sleep(min(left, pause))
            pause = min(pause * 2, 0.1)

    @_locked
    def job(self, job_id: str) -> str:
        """The job id a URL names (`@latest` too), refused as NotFound if there is none."""
        sl = self.app()
        try:
            job = sl.resolve_job(job_id)
        except Rejected as exc:
            raise NotFound(str(exc)) from None
        if not sl.open_store().job_exists(job):
            raise NotFound(f"unknown job {job}")
        return job

    # -- the jobs list

    @_locked
    def jobs_page(
        self, status: str | None, pipeline: str | None, offset: int, limit: int
    ) -> dict[str, Any]:
        sl = self.app()
        rows = sl.job_rows()
        page = views.paginate(views.filter_jobs(rows, status, pipeline), offset, limit)
        return {
            "page": page,
            # only the page's jobs are folded (a few ms each); the rest is the jobs table
            "jobs": [views.job_list_row(row, sl.job_state(row["job_id"])) for row in page.items],
            "pipelines": views.pipelines_of(rows),
            "last_seq": sl.last_seq(),
        }

    @_locked
    def job_rows_for(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The jobs-list lines of these jobs (for a live update)."""
        sl = self.app()
        wanted = set(job_ids[:LIVE_ROWS])
        rows = [row for row in sl.job_rows() if row["job_id"] in wanted]
        return [views.job_list_row(row, sl.job_state(row["job_id"])) for row in rows]

    # -- one job

    @_locked
    def fold(self, job_id: str, until: str | None = None) -> tuple[JobState, list[Any], int]:
        """The job's fold (as of `until`, like `replay --until`), the events folded, and how
        many events the job has now."""
        from steplog.commands.replay import BadPoint, replay

        job = self.job(job_id)
        sl = self.app()
        store = sl.open_store()
        total = store.job_version(job)
        if until is None:
            events = list(sl.read_events(job))
            return manifest.project(job, events), events, total
        try:
            view = replay(store, job, until)
        except BadPoint as exc:
            raise BadParam(str(exc)) from None
        return view.state, view.events, total

    @_locked
    def job_page(self, job_id: str, until: str | None) -> dict[str, Any]:
        from steplog.commands.timeline import build
        from steplog.commands.timeline_svg import render_svg

        state, events, total = self.fold(job_id, until)
        steps = state.steps
        drawn = dict(list(steps.items())[: views.DAG_LIMIT])
        layers = views.dag_layers({name: s.needs for name, s in drawn.items()})
        svg = None
        if events and len(steps) <= views.DAG_LIMIT:
            svg = render_svg(build(state.job_id, events), width=1100)
        return {
            "state": state,
            "totals": views.totals(state),
            "layers": [[views.step_box(steps[name]) for name in layer] for layer in layers],
            "undrawn": max(0, len(steps) - views.DAG_LIMIT),
            "timeline_svg": svg,
            "markers": [m for m in map(views.marker_of, events) if m is not None],
            "total_events": total,
            "until": until,
        }

    @_locked
    def events_page(
        self,
        job_id: str,
        *,
        after: int,
        limit: int,
        type_glob: str | None,
        step: str | None,
        level: str | None,
        until: int | None = None,
    ) -> tuple[list[Any], int | None]:
        """A page of the job's events after version `after` that pass the filters, and the
        `after` of the next page (None: this is the last)."""
        job = self.job(job_id)
        sl = self.app()
        if step is not None:
            try:
                check_step(sl.open_store(), job, step)
            except Rejected as exc:
                raise BadParam(str(exc)) from None
        keep = event_filter(type_glob, step, level)
        found: list[Any] = []
        for ev in sl.read_events(job, after=after, until=until):
            if keep(ev):
                if len(found) == limit:
                    return found, found[-1].version
                found.append(ev)
        return found, None

    @_locked
    def new_events(self, job_id: str, after: int) -> list[Any]:
        return list(self.app().read_events(job_id, after=after))

    # -- one step

    @_locked
    def step_attempt(self, job_id: str, step: str, attempt: int | None) -> Any:
        job = self.job(job_id)
        try:
            return self.app().show(job, step, attempt)
        except Rejected as exc:
            raise NotFound(str(exc)) from None

    @_locked
    def step_page(self, job_id: str, step: str) -> dict[str, Any]:
        job = self.job(job_id)
        sl = self.app()
        latest = self.step_attempt(job, step, None)
        step_events = list(sl.stored_events(job, step=step))
        numbers = views.attempt_numbers(step_events)[-MAX_ATTEMPTS_SHOWN:]
        misses = views.miss_reasons(step_events)
        finishes = views.finish_reasons(step_events)
        writes = views.file_writes(step_events)
        attempts = []
        for number in reversed(numbers):
            shown = latest if number == latest.attempt else self.step_attempt(job, step, number)
            attempts.append(
                {
                    "a": shown,
                    "miss": misses.get(number),
                    "finish": finishes.get(number, []),
                    "files": self._files(job, writes.get(number, [])),
                }
            )
        return {"job_id": job, "step": step, "attempts": attempts, "count": latest.attempts}

    def _files(self, job: str, writes: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """Each file an attempt wrote: its content then, and a diff against the content the
        path had before the attempt's first write."""
        if not writes:
            return []
        sl = self.app()
        after = sl.files_at(job, max(v for v, _ in writes))
        before = sl.files_at(job, min(v for v, _ in writes) - 1)
        out = []
        for _, path in dict((p, (v, p)) for v, p in writes).values():
            new, old = views.as_text(after.get(path)), views.as_text(before.get(path))
            out.append(
                {
                    "path": path,
                    "content": new,
                    "had_before": old is not None,
                    "diff": views.diff_lines(old, new, f"{path} (before)", path),
                }
            )
        return out

    # -- two jobs

    @_locked
    def compare(self, a: str, b: str) -> dict[str, Any]:
        a_state, _, _ = self.fold(a)
        b_state, _, _ = self.fold(b)
        rows = views.compare_steps(a_state, b_state)
        detailed = []
        for row in [r for r in rows if r.differs][:MAX_COMPARED]:
            one, two = (
                self._latest(a_state.job_id, row.step),
                self._latest(b_state.job_id, row.step),
            )
            detailed.append(
                {
                    "step": row.step,
                    "prompt": views.diff_lines(
                        one and one.prompt, two and two.prompt, a_state.job_id, b_state.job_id
                    ),
                    "answer": views.diff_lines(
                        one and one.answer, two and two.answer, a_state.job_id, b_state.job_id
                    ),
                }
            )
        return {"a": a_state, "b": b_state, "rows": rows, "detailed": detailed}

    def _latest(self, job: str, step: str) -> Any:
        try:
            return self.app().show(job, step)
        except Rejected:
            return None  # the step has not started in that job
