"""Group commit: batches from one tick share a transaction; each caller gets its own events back."""

from __future__ import annotations

import anyio

from steplog.eventstore.events import NewEvent, StepStarted
from steplog.eventstore.record import VersionConflict
from steplog.executor.committer import GroupCommitter
from steplog.projections.store import open_store
from tests.strategies import job_created


def started(step: str) -> NewEvent:
    return NewEvent.of(StepStarted(attempt=1, fingerprint="f"), step=step)


def test_concurrent_appends_share_one_transaction_and_keep_their_order(tmp_path):
    store = open_store(tmp_path / "s.db")
    store.append("j", [job_created(["a"])], expected_version=0)
    transactions: list[int] = []

    def commit(events, blobs):
        transactions.append(len(events))
        return store.append("j", events, blobs=blobs)

    results: dict[str, list[int]] = {}

    async def main():
        committer = GroupCommitter(commit)

        async def step(name: str, count: int):
            stored = await committer.append([started(name) for _ in range(count)])
            results[name] = [ev.version for ev in stored]
            assert all(ev.step == name for ev in stored)

        async with anyio.create_task_group() as tg:
            tg.start_soon(committer.run)
            async with anyio.create_task_group() as steps:
                for i in range(10):
                    steps.start_soon(step, f"s{i}", 1 + i % 3)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert transactions == [sum(1 + i % 3 for i in range(10))]  # one transaction for all ten
    versions = [v for name in sorted(results, key=lambda n: int(n[1:])) for v in results[name]]
    assert versions == list(range(2, 2 + len(versions)))


def test_a_failed_transaction_reaches_every_waiter_and_writes_nothing(tmp_path):
    store = open_store(tmp_path / "s.db")
    store.append("j", [job_created(["a"])], expected_version=0)
    errors: list[BaseException] = []

    def commit(events, blobs):
        return store.append("j", events, expected_version=99, blobs=blobs)  # stale on purpose

    async def main():
        committer = GroupCommitter(commit)

        async def step(name: str):
            try:
                await committer.append([started(name)])
            except VersionConflict as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(committer.run)
            async with anyio.create_task_group() as steps:
                for i in range(3):
                    steps.start_soon(step, f"s{i}")
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(errors) == 3 and all(isinstance(e, VersionConflict) for e in errors)
    assert store.job_version("j") == 1
