"""The executor in-process, on real SQLite files: what it appends, and what the folds make of it."""

from __future__ import annotations

from pathlib import Path

from steplog.commands.cli.display import PlainDisplay
from steplog.commands.jobs import (
    ResumeCommand,
    RunCommand,
    execute,
    fold_job,
    prepare_resume,
    prepare_run,
)
from steplog.projections import cache, manifest
from steplog.projections.store import open_store
from steplog.projections.tables import read_cache_table
from tests.on_disk import EXAMPLE


def run_job(store, pipeline: Path, job_id: str, tmp_path: Path, **inputs: str):
    prepared = prepare_run(
        store,
        RunCommand(
            pipeline_path=pipeline, job_id=job_id, inputs=inputs, workspace=tmp_path / job_id
        ),
    )
    display = PlainDisplay(prepared.state, quiet=True)
    outcome = execute(store, prepared, observer=display)
    return outcome, display.state


def types_of(store, job_id: str, step: str | None = None) -> list[str]:
    return [ev.type for ev in store.read_job(job_id) if step is None or ev.step == step]


def test_rebuilt_projection_equals_the_state_the_executor_saw(tmp_path):
    store = open_store(tmp_path / "s.db")
    outcome, seen = run_job(store, EXAMPLE, "j", tmp_path)
    assert outcome.succeeded
    rebuilt = manifest.project("j", store.read_job("j"))
    assert rebuilt.to_manifest() == seen.to_manifest()
    assert rebuilt.status == "succeeded" and rebuilt.completed_steps == [
        "architect",
        "builder",
        "docs",
        "qa",
    ]
    assert read_cache_table(store.conn) == cache.project(store.read_all())


def test_step_event_sequence_for_a_miss_then_a_hit(tmp_path):
    store = open_store(tmp_path / "s.db")
    run_job(store, EXAMPLE, "first", tmp_path)
    assert types_of(store, "first", "architect") == [
        "step.started",
        "cache.miss",
        "llm.request",
        "llm.response",
        "step.succeeded",
    ]
    assert types_of(store, "first", "builder") == [
        "step.started",
        "cache.miss",
        "llm.request",
        "llm.response",
        "file.written",
        "file.written",
        "file.written",
        "step.succeeded",
    ]
    run_job(store, EXAMPLE, "second", tmp_path)
    assert types_of(store, "second", "architect") == ["step.started", "cache.hit", "step.succeeded"]
    hit = next(
        ev for ev in store.read_job("second") if ev.type == "cache.hit" and ev.step == "builder"
    )
    assert hit.data["origin_job"] == "first" and hit.data["tokens_saved"] > 0


def test_independent_steps_run_concurrently(tmp_path):
    slow = EXAMPLE.read_text().replace(
        'kind = "offline"\nmodel = "offline-1"',
        'kind = "offline"\nmodel = "offline-1"\noptions = { delay_s = 0.3 }',
    )
    pipeline = tmp_path / "slow.toml"
    pipeline.write_text(slow)
    store = open_store(tmp_path / "s.db")
    run_job(store, pipeline, "c", tmp_path)
    order = [(ev.type, ev.step) for ev in store.read_job("c") if ev.step in ("docs", "qa")]
    first_success = next(i for i, (t, _) in enumerate(order) if t == "step.succeeded")
    started_before = {s for t, s in order[:first_success] if t == "llm.request"}
    assert started_before == {"docs", "qa"}  # both were calling before either finished


def test_editing_one_prompt_reruns_that_step_and_what_its_change_reaches(tmp_path):
    store = open_store(tmp_path / "s.db")
    run_job(store, EXAMPLE, "before", tmp_path)
    edited = tmp_path / "edited.toml"
    edited.write_text(
        EXAMPLE.read_text().replace("Write user documentation", "Write short user documentation")
    )
    run_job(store, edited, "after", tmp_path)
    state = fold_job(store, "after")
    hits = {name: step.cache_hit for name, step in state.steps.items()}
    assert hits == {"architect": True, "builder": True, "docs": False, "qa": True}


def test_resume_with_an_edited_completed_step_reruns_it_and_its_dependants(tmp_path):
    store = open_store(tmp_path / "s.db")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        EXAMPLE.read_text().replace(
            '[steps.qa]\nneeds = ["builder"]\nprovider = "local"',
            '[steps.qa]\nneeds = ["builder"]\nprovider = "local"\noptions = { fail = true }',
        )
    )
    outcome, _ = run_job(store, pipeline, "r", tmp_path)
    assert not outcome.succeeded and outcome.failed_steps == ["qa"]
    pipeline.write_text(
        EXAMPLE.read_text().replace("Design {{ inputs.idea }}.", "Design {{ inputs.idea }} well.")
    )
    prepared = prepare_resume(store, ResumeCommand(job_id="r"))
    assert prepared.plan.run == ["architect", "builder", "docs", "qa"]
    assert execute(store, prepared).succeeded
    resumed = next(ev for ev in store.read_job("r") if ev.type == "job.resumed")
    assert resumed.data["changed_steps"] == ["architect"]
    state = fold_job(store, "r")
    assert state.status == "succeeded" and state.steps["architect"].cache_hit is False


# -- properties over random pipelines --------------------------------------------------------------

import tempfile  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def random_pipeline(draw) -> str:
    """A random DAG of offline steps: each step needs some earlier ones and reads their output."""
    count = draw(st.integers(min_value=1, max_value=7))
    lines = [
        'name = "random"',
        "[inputs.topic]",
        'default = "t"',
        "[providers.local]",
        'kind = "offline"',
        "max_retries = 0",
    ]
    for i in range(count):
        needs = (
            sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=3)))
            if i
            else []
        )
        output = draw(st.sampled_from(["text", "json", "files"]))
        reads = " ".join(f"{{{{ steps.s{n}.output }}}}" for n in needs)
        lines += [
            f"[steps.s{i}]",
            f"needs = {[f's{n}' for n in needs]!r}".replace("'", '"'),
            'provider = "local"',
            f'output = "{output}"',
            f'prompt = """{"files" if output == "files" else "about"} {{{{ inputs.topic }}}} {reads}"""',
        ]
        if draw(st.integers(min_value=0, max_value=6)) == 0:
            lines.append("options = { fail = true }")
    return "\n".join(lines) + "\n"


@settings(max_examples=80, deadline=None)
@given(random_pipeline(), st.text(alphabet="abc xyz", min_size=1, max_size=12))
def test_for_any_pipeline_the_rebuilt_state_is_what_the_executor_saw(source, topic):
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pipeline = tmp / "p.toml"
        pipeline.write_text(source)
        store = open_store(tmp / "s.db")
        outcome, seen = run_job(store, pipeline, "j", tmp, topic=topic)
        rebuilt = manifest.project("j", store.read_job("j"))
        assert rebuilt.to_manifest() == seen.to_manifest()
        assert rebuilt.status == ("succeeded" if outcome.succeeded else "failed")
        assert set(rebuilt.completed_steps) | set(rebuilt.pending_steps) == set(rebuilt.steps)
        for name in outcome.failed_steps:
            assert rebuilt.steps[name].status == "failed"
        # a second run is served entirely by the cache for every step that succeeded before
        again, _ = run_job(store, pipeline, "k", tmp, topic=topic)
        second = manifest.project("k", store.read_job("k"))
        for name, step in rebuilt.steps.items():
            if step.status == "succeeded":
                assert second.steps[name].cache_hit is True
        assert read_cache_table(store.conn) == cache.project(store.read_all())
        store.close()


def test_the_runner_holds_only_the_outputs_a_step_still_to_run_reads(tmp_path, monkeypatch):
    """A chain of 12 steps and a report reading the first and the last: when each step starts,
    the runner holds exactly the outputs some step still to run reads, not every one so far."""
    from steplog.executor.step import StepRunner

    held: dict[str, set[str]] = {}
    original = StepRunner.run

    async def watched(self, name, attempt, release):  # type: ignore[no-untyped-def]
        held[name] = set(self.outputs)
        return await original(self, name, attempt, release)

    monkeypatch.setattr(StepRunner, "run", watched)
    lines = ['name = "held"', "[providers.local]", 'kind = "offline"']
    for i in range(12):
        lines += [f"[steps.s{i}]", 'provider = "local"']
        if i:
            lines += [f'needs = ["s{i - 1}"]', f'prompt = "{i} {{{{ steps.s{i - 1}.output }}}}"']
        else:
            lines += ['prompt = "first"']
    lines += ["[steps.report]", 'provider = "local"', 'needs = ["s11"]']
    lines += ['prompt = "{{ steps.s0.output }} {{ steps.s11.output }}"']
    path = tmp_path / "held.toml"
    path.write_text("\n".join(lines) + "\n")
    store = open_store(tmp_path / "s.db")
    outcome, state = run_job(store, path, "j", tmp_path)
    assert outcome.succeeded and state.status == "succeeded"
    assert held["s0"] == set() and held["s1"] == {"s0"}
    for i in range(2, 12):
        assert held[f"s{i}"] == {"s0", f"s{i - 1}"}
    assert held["report"] == {"s0", "s11"}
