"""One step's pipeline: render -> cache key -> cache.hit, or cache.miss and the provider call ->
output parsed -> files written atomically (file.written) -> step.succeeded, or step.failed.

A StepRunner also holds what templates see of the steps done so far (`steps.NAME.output` and
`.files`), and what steplog last wrote at each path of the workspace.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from steplog.eventstore.events import (
    CacheHit,
    CacheInvalidated,
    CacheMiss,
    FileWritten,
    NewEvent,
    StepFailed,
    StepStarted,
    StepSucceeded,
    step_skipped_rows,
)
from steplog.eventstore.record import Blob, blob_of_text, blob_sha256, text_sha256
from steplog.executor import explain, faults
from steplog.executor.cachehistory import previous_run
from steplog.executor.calls import CallFailed, ProviderCalls
from steplog.executor.flights import Served
from steplog.executor.joblog import JobLog
from steplog.executor.outputs import OutputProblem, StepOutput, parse_output
from steplog.executor.pipeline import Pipeline
from steplog.executor.plan import Plan
from steplog.executor.templates import TemplateProblem
from steplog.executor.workspace import UnsafePath, safe_relative, write_file
from steplog.projections.cache import CacheEntry
from steplog.projections.store import cache_entry
from steplog.providers.base import LLMRequest


class StepRunner:
    def __init__(
        self,
        log: JobLog,
        pipeline: Pipeline,
        inputs: dict[str, str],
        workspace: Path,
        calls: ProviderCalls,
        *,
        last_written: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self.pipeline = pipeline
        self.inputs = inputs
        self.workspace = workspace
        self.calls = calls
        self.outputs: dict[str, StepOutput] = {}
        self.errors: dict[str, str] = {}  # step -> the error it failed with
        self._steps_context: dict[str, dict[str, Any]] = {}  # templates' `steps`, by step
        # step -> how many steps still to run read its output; at 0 the output is let go
        self._readers_left: Counter[str] = Counter()
        # path -> sha256 steplog last wrote there (from the log, then as this run writes)
        self.last_written: dict[str, str] = dict(last_written or {})

    def skip_reused(self, plan: Plan) -> None:
        """Append step.skipped for every reused step; load the outputs still to be read."""
        references = self.pipeline.references
        self._readers_left = Counter(r for s in plan.run for r in references.get(s, ()))
        wanted = plan.reused_outputs_read(self.pipeline)
        contents = self.log.store.get_blobs(list(wanted.values()))
        for name, sha in wanted.items():
            kind = self.pipeline.spec.steps[name].output
            self._record_output(name, parse_output(kind, contents[sha].decode("utf-8")))
        fingerprints = self.pipeline.step_fingerprints
        skipped = step_skipped_rows(
            (name, reason, fingerprints[name], sha) for name, (sha, reason) in plan.reuse.items()
        )
        if skipped:
            self.log.emit_rows(skipped)

    def _record_output(self, name: str, output: StepOutput) -> None:
        if not self._readers_left[name]:
            return  # no step still to run reads it (the leaves of a fan-out): not held
        self.outputs[name] = output
        self._steps_context[name] = {"output": output.value, "files": output.files}

    def _done_reading(self, name: str) -> None:
        """`name` succeeded: let go of each output it read that no other step still needs
        (in a chain of 10,000 steps, every output but the last)."""
        for read in self.pipeline.references.get(name, ()):
            self._readers_left[read] -= 1
            if self._readers_left[read] <= 0:
                self.outputs.pop(read, None)
                self._steps_context.pop(read, None)

    def _context(self, name: str) -> dict[str, Any]:
        """What the step's templates see: only the upstream steps they read, so the text
        never depends on which other steps happen to have finished."""
        context = self._steps_context
        steps = {r: context[r] for r in self.pipeline.reads_in_order.get(name, ())}
        return {"inputs": self.inputs, "steps": steps}

    async def run(self, name: str, attempt: int, release: Callable[[], None]) -> bool:
        """Run one step; `release` lets dependants start once its success is settled in memory.

        Dependants are released just before the success is committed, so their first batch can
        share that transaction (group commit); they reach no provider or file before it lands.
        """
        spec = self.pipeline.spec.steps[name]
        fingerprint = self.pipeline.step_fingerprints[name]
        t0 = time.monotonic()
        started = NewEvent.of(StepStarted(attempt=attempt, fingerprint=fingerprint), name)
        try:
            system, prompt = self.pipeline.render_step(name, self._context(name))
        except TemplateProblem as exc:
            await self._fail(name, [started], str(exc), "template_error", attempt, t0)
            return False
        parts, key = self.pipeline.key_for(name, system, prompt)
        detail = explain.cache_detail(
            self.pipeline,
            name,
            system=system,
            prompt=prompt,
            inputs=self.inputs,
            upstream={r: self.outputs[r].sha256 for r in self.pipeline.references.get(name, ())},
        )
        store = self.log.store
        entry = cache_entry(store, key)
        # Events not yet committed, and the blobs they point at: committed together below.
        pending: list[NewEvent] = [started]
        pending_blobs: list[Blob] = []
        if entry is not None:
            text = store.get_blob(entry.response_sha256).decode("utf-8")
            pending.append(NewEvent.of(self._hit(entry, key, parts, detail), name))
            cache_hit = True
        else:
            request = LLMRequest(
                step=name,
                system=system,
                prompt=prompt,
                model=self.pipeline.model_for(name),
                options=self.pipeline.options_for(name),
                output=spec.output,
                on_truncation=spec.on_truncation,
            )
            previous = previous_run(
                store, self.pipeline.name, name, detail, parts, job_inputs=self.inputs
            )
            miss = CacheMiss(
                cache_key=key,
                parts=parts,
                pipeline=self.pipeline.name,
                detail=detail,
                **explain.miss_fields(previous, key, parts, detail),
            )
            try:
                text, pending, pending_blobs = await self.calls.call(
                    name, request, key, pending, NewEvent.of(miss, name)
                )
                cache_hit = False
            except Served as served:  # another job's call for this key answered while it waited
                entry = served.entry
                text = store.get_blob(entry.response_sha256).decode("utf-8")
                hit = self._hit(entry, key, parts, detail)
                pending = [*served.pending, NewEvent.of(hit, name)]
                cache_hit = True
            except CallFailed as exc:
                await self._fail(name, [], exc.error, exc.error_type, attempt, t0)
                return False
        try:
            output = parse_output(spec.output, text)
            for path in output.files:
                safe_relative(path)  # an answer naming a bad path is refused before any write
        except (OutputProblem, UnsafePath) as exc:
            # A response the step cannot use must not be served again from the cache.
            refused = entry.response_sha256 if entry else text_sha256(text)
            invalidated = CacheInvalidated(cache_key=key, reason=str(exc), response_sha256=refused)
            pending.append(NewEvent.of(invalidated, name))
            error_type = "unsafe_path" if isinstance(exc, UnsafePath) else "bad_output"
            await self._fail(name, pending, str(exc), error_type, attempt, t0, pending_blobs)
            return False
        if output.files:
            if not cache_hit and pending:  # the paid-for answer lands before the workspace moves
                await self.log.commit(pending, pending_blobs)
                pending, pending_blobs = [], []
            try:
                self._write_files(name, output, pending)
            except (UnsafePath, OSError) as exc:
                error_type = "unsafe_path" if isinstance(exc, UnsafePath) else "io_error"
                error = f"cannot write files: {exc}"
                await self._fail(name, pending, error, error_type, attempt, t0, pending_blobs)
                return False
        # A text step's output is its answer, whose blob this commit or the cache holds already:
        # not encoded a second time (an answer may be hundreds of MB).
        same = output.text is text
        output_blobs: list[Blob] = [] if same else [blob_of_text(output.text)]
        succeeded = StepSucceeded(
            output_sha256=text_sha256(text) if same else blob_sha256(output_blobs[0]),
            output=spec.output,
            cache_hit=cache_hit,
            cache_key=key,
            duration_s=round(time.monotonic() - t0, 6),
            fingerprint=fingerprint,
        )
        pending.append(NewEvent.of(succeeded, name))
        self._record_output(name, output)
        self._done_reading(name)
        faults.reached("before:step.succeeded", name)
        release()
        await self.log.commit(pending, [*pending_blobs, *output_blobs])
        return True

    def _hit(self, entry: CacheEntry, key: str, parts: dict[str, str], detail: Any) -> CacheHit:
        return CacheHit(
            cache_key=key,
            response_sha256=entry.response_sha256,
            origin_job=entry.origin_job,
            origin_step=entry.origin_step,
            tokens_saved=entry.tokens_in + entry.tokens_out,
            parts=parts,
            pipeline=self.pipeline.name,
            detail=detail,
        )

    def _write_files(self, name: str, output: StepOutput, events: list[NewEvent]) -> None:
        """Write each file, appending its file.written to `events` as it lands."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        for path, content in output.files.items():
            faults.reached("before:file.write", name)
            result = write_file(
                self.workspace,
                path,
                content.encode("utf-8"),
                last_written=self.last_written,
                keep=self.log.store.put_blob,  # a hand-edited file is kept before it is replaced
                checkpoint=lambda point: faults.reached(point, name),
            )
            outside = result.reason == "modified_outside"
            events.append(
                NewEvent.of(
                    FileWritten(
                        path=result.path,
                        sha256=result.sha256,
                        wrote=result.wrote,
                        reason=result.reason,
                        size=result.size,  # type: ignore[arg-type]
                        found_sha256=result.found_sha256,
                        last_written=self.last_written.get(result.path) if outside else None,
                    ),
                    name,
                    "WARNING" if outside else None,
                )
            )
            self.last_written[result.path] = result.sha256
            if result.wrote:
                faults.reached("after:file.rename", name)

    async def _fail(
        self,
        name: str,
        before: list[NewEvent],
        error: str,
        error_type: str,
        attempt: int,
        t0: float,
        blobs: Sequence[Blob] = (),
    ) -> None:
        failed = StepFailed(
            error=error,
            error_type=error_type,
            attempt=attempt,
            duration_s=round(time.monotonic() - t0, 6),
        )
        self.errors[name] = error
        await self.log.commit([*before, NewEvent.of(failed, name)], blobs)
