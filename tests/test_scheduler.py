"""The DAG scheduler (executor/scheduler.py) on any pipeline shape: a step starts only once its
needs succeeded, never more than max_under_way steps are under way, and the outcome is the one
a plain fold over the DAG gives."""

from __future__ import annotations

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.executor.pipeline import parse_pipeline
from steplog.executor.plan import Plan
from steplog.executor.scheduler import Scheduler


@st.composite
def dags(draw):
    """Steps s0..sN-1, each needing some earlier ones; an outcome and a pause count for each;
    some steps reused (done by an earlier run); a bound on the steps under way."""
    count = draw(st.integers(1, 12))
    needs = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(count)
    ]
    outcomes = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    pauses = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    reused = draw(st.sets(st.integers(0, count - 1)))
    bound = draw(st.integers(1, 4))
    return needs, outcomes, pauses, reused, bound


def pipeline_of(needs: list[list[int]]):
    lines = ['name = "dag"', "[providers.local]", 'kind = "offline"']
    for i, wanted in enumerate(needs):
        lines += [f"[steps.s{i}]", 'provider = "local"', f'prompt = "step {i}"']
        if wanted:
            lines.append("needs = [" + ", ".join(f'"s{n}"' for n in wanted) + "]")
    return parse_pipeline("\n".join(lines) + "\n", "dag.toml")


def expected(needs, outcomes, reused) -> tuple[set[str], set[str], set[str]]:
    """Succeeded, failed, blocked: a step runs when every need succeeded (or was reused)."""
    ok: dict[int, bool] = {}
    succeeded, failed, blocked = set(), set(), set()
    for i, wanted in enumerate(needs):  # needs point back: file order is a topological order
        if i in reused:
            ok[i] = True
            continue
        if not all(ok[n] for n in wanted):
            ok[i] = False
            blocked.add(f"s{i}")
        elif outcomes[i]:
            ok[i] = True
            succeeded.add(f"s{i}")
        else:
            ok[i] = False
            failed.add(f"s{i}")
    return succeeded, failed, blocked


@settings(max_examples=150, deadline=None)
@given(dags())
def test_any_dag_runs_as_its_fold_says_within_the_bound(dag):
    needs, outcomes, pauses, reused, bound = dag
    pipeline = pipeline_of(needs)
    names = [f"s{i}" for i in range(len(needs))]
    plan = Plan(run=[n for i, n in enumerate(names) if i not in reused])
    plan.reuse = {n: ("0" * 64, "reused") for i, n in enumerate(names) if i in reused}
    scheduler = Scheduler(pipeline, max_under_way=bound)
    settled_ok: set[str] = set(plan.reuse)
    started: list[str] = []
    under_way = {"now": 0, "most": 0}

    async def run_step(name: str, attempt: int, release) -> bool:
        index = int(name[1:])
        assert attempt == 1
        assert all(f"s{n}" in settled_ok for n in needs[index]), (name, settled_ok)
        started.append(name)
        under_way["now"] += 1
        under_way["most"] = max(under_way["most"], under_way["now"])
        try:
            for _ in range(pauses[index]):
                await anyio.lowlevel.checkpoint()
            if outcomes[index]:
                settled_ok.add(name)
                release()
            return outcomes[index]
        finally:
            under_way["now"] -= 1

    outcome = anyio.run(scheduler.run, plan, run_step)
    succeeded, failed, blocked = expected(needs, outcomes, reused)
    assert set(started) == succeeded | failed and len(started) == len(set(started))
    assert set(outcome.failed_steps) == failed
    assert set(outcome.blocked_steps) == blocked
    assert outcome.succeeded == (not failed and not blocked)
    assert under_way["most"] <= bound


def test_a_long_blocked_chain_settles_without_recursing():
    """10,000 steps in a chain whose first fails: every other one is blocked, none started."""
    count = 10_000
    pipeline = pipeline_of([[i - 1] if i else [] for i in range(count)])
    plan = Plan(run=[f"s{i}" for i in range(count)])
    calls: list[str] = []

    async def run_step(name: str, attempt: int, release) -> bool:
        calls.append(name)
        return False

    outcome = anyio.run(Scheduler(pipeline).run, plan, run_step)
    assert calls == ["s0"]
    assert outcome.failed_steps == ["s0"] and len(outcome.blocked_steps) == count - 1


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 12), st.sets(st.integers(0, 11)))
def test_a_drain_at_any_point_starts_nothing_more_and_ends_the_run(dag, drain_at, calling):
    """Steps run on runner tasks that wait, idle, to be handed the next ready step: a drain
    (at the drain_at-th start) must start nothing more, let the steps inside a provider call
    finish, cancel the rest, and end every runner, idle or not."""
    needs, outcomes, pauses, reused, bound = dag
    pipeline = pipeline_of(needs)
    names = [f"s{i}" for i in range(len(needs))]
    plan = Plan(run=[n for i, n in enumerate(names) if i not in reused])
    plan.reuse = {n: ("0" * 64, "reused") for i, n in enumerate(names) if i in reused}
    scheduler = Scheduler(pipeline, max_under_way=bound)
    started: list[str] = []
    finished: list[str] = []
    done_before_drain: set[str] = set()

    async def run_step(name: str, attempt: int, release) -> bool:
        index = int(name[1:])
        started.append(name)
        if len(started) == drain_at:
            done_before_drain.update(finished)
            scheduler.drain()
        if index in calling:
            with scheduler.calling(name):
                for _ in range(pauses[index] + 1):
                    await anyio.lowlevel.checkpoint()
        else:
            for _ in range(pauses[index] + 1):
                await anyio.lowlevel.checkpoint()
        if outcomes[index]:
            release()
        finished.append(name)
        return outcomes[index]

    async def bounded():
        with anyio.fail_after(10):  # a runner left waiting would hang the run
            return await scheduler.run(plan, run_step)

    outcome = anyio.run(bounded)
    assert len(started) == len(set(started))
    if len(started) < drain_at:  # the run ended before the drain_at-th start
        assert not scheduler.draining and not outcome.interrupted
        return
    assert len(started) == drain_at  # nothing started after the drain
    assert outcome.interrupted
    draining_step = started[-1]
    assert draining_step not in finished  # cancelled: it was outside a call when it drained
    for name in started[:-1]:
        if int(name[1:]) in calling:
            assert name in finished  # a call in flight may finish
        elif name not in done_before_drain:
            assert name not in finished  # cancelled where it stood
