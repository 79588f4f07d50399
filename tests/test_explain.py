"""executor.explain: a single changed field is named exactly; order and equal details say nothing."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.eventstore.events import CacheDetail, CacheMiss
from steplog.executor import explain
from steplog.executor.explain import PreviousRun, describe, miss_fields, template_inputs
from steplog.executor.outputs import StepOutput
from steplog.executor.pipeline import parse_pipeline

sha = st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest())
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
option_values = (
    st.integers(-5, 5)
    | st.floats(-2, 2, allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(max_size=6)
)


@st.composite
def details(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "provider": {
            "kind": draw(st.sampled_from(["offline", "openai"])),
            "model": draw(st.text(min_size=1, max_size=8)),
            "options": draw(st.dictionaries(names, option_values, max_size=4)),
        },
        "output": draw(st.sampled_from(["text", "json", "files"])),
        "fingerprint": draw(sha),
        "templates": {"system": draw(st.none() | sha), "prompt": draw(sha)},
        "rendered": {"system": draw(st.none() | sha), "prompt": draw(sha)},
        "inputs": draw(st.dictionaries(names, sha, max_size=3)),
        "upstream": draw(st.dictionaries(names, sha, max_size=3)),
    }


def _different(draw: st.DrawFn, strategy: st.SearchStrategy, old: Any) -> Any:
    return draw(strategy.filter(lambda v: json.dumps(v) != json.dumps(old)))


@st.composite
def one_change(draw: st.DrawFn) -> tuple[dict, dict, tuple[str, str]]:
    """A detail, a copy with exactly one field changed, and the (part, name) to expect."""
    old = draw(details())
    new = copy.deepcopy(old)
    field = draw(
        st.sampled_from(
            ["option", "model", "kind", "system", "prompt", "input", "upstream", "output"]
        )
    )
    if field == "option":
        options = new["provider"]["options"]
        name = draw(names)
        options[name] = _different(draw, option_values, options.get(name))
        return old, new, ("provider", f"options.{name}")
    if field in ("model", "kind"):
        strategy = (
            st.text(min_size=1, max_size=8)
            if field == "model"
            else st.sampled_from(["offline", "openai", "ollama"])
        )
        new["provider"][field] = _different(draw, strategy, old["provider"][field])
        return old, new, ("provider", field)
    if field in ("system", "prompt"):
        new["templates"][field] = _different(draw, sha, old["templates"][field])
        return old, new, ("template", field)
    if field in ("input", "upstream"):
        key = "inputs" if field == "input" else "upstream"
        name = draw(names)
        new[key][name] = _different(draw, sha, old[key].get(name))
        return old, new, (field, name)
    new["output"] = _different(draw, st.sampled_from(["text", "json", "files"]), old["output"])
    return old, new, ("output", "output")


@settings(max_examples=150)
@given(one_change())
def test_a_single_changed_field_is_named_exactly(case):
    old, new, expected = case
    changes = explain.explain(old, new)
    assert [(c.part, c.name) for c in changes] == [expected]
    assert describe(changes[0])  # every change reads as one line


def _shuffled(value: Any, rnd) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    return value


@settings(max_examples=60)
@given(details(), st.randoms(use_true_random=False))
def test_identical_details_give_no_change_whatever_the_dict_order(detail, rnd):
    assert explain.explain(detail, copy.deepcopy(detail)) == []
    assert explain.explain(detail, _shuffled(detail, rnd)) == []
    assert explain.explain(CacheDetail(**detail), _shuffled(detail, rnd)) == []


@settings(max_examples=60)
@given(one_change(), st.randoms(use_true_random=False))
def test_dict_order_never_changes_the_explanation(case, rnd):
    old, new, _ = case
    assert explain.explain(_shuffled(old, rnd), _shuffled(new, rnd)) == explain.explain(old, new)


def test_values_are_compared_as_the_key_sees_them():
    base = {"provider": {"kind": "openai", "model": "m", "options": {"temperature": 0}}}
    as_float = {"provider": {"kind": "openai", "model": "m", "options": {"temperature": 0.0}}}
    as_true = {"provider": {"kind": "openai", "model": "m", "options": {"temperature": True}}}
    assert [c.name for c in explain.explain(base, as_float)] == ["options.temperature"]
    assert [c.name for c in explain.explain(as_true, {**base})] == ["options.temperature"]


def test_template_change_hides_its_symptoms_but_not_other_causes():
    old = {
        "provider": {"kind": "offline", "model": "m", "options": {}},
        "output": "text",
        "fingerprint": "f1" * 32,
        "templates": {"system": None, "prompt": "a" * 64},
        "rendered": {"system": None, "prompt": "b" * 64},
        "inputs": {"idea": "c" * 64},
        "upstream": {},
    }
    new = copy.deepcopy(old)
    new["templates"]["prompt"] = "d" * 64
    new["rendered"]["prompt"] = "e" * 64
    new["fingerprint"] = "f2" * 32
    assert [(c.part, c.name) for c in explain.explain(old, new)] == [("template", "prompt")]
    new["inputs"]["idea"] = "9" * 64
    assert [(c.part, c.name) for c in explain.explain(old, new)] == [
        ("template", "prompt"),
        ("input", "idea"),
    ]
    # nothing but the definition: a field the detail does not spell out (e.g. the provider name)
    only_def = copy.deepcopy(old)
    only_def["fingerprint"] = "f3" * 32
    assert [(c.part, c.name) for c in explain.explain(old, only_def)] == [
        ("definition", "fingerprint")
    ]
    # nothing but the rendered text: the last resort
    only_text = copy.deepcopy(old)
    only_text["rendered"]["prompt"] = "7" * 64
    assert [(c.part, c.name) for c in explain.explain(old, only_text)] == [("rendered", "prompt")]


def test_describe_reads_like_the_manual():
    change = explain.explain(
        {"provider": {"kind": "offline", "model": "m", "options": {"temperature": 0}}},
        {"provider": {"kind": "offline", "model": "m", "options": {"temperature": 0.7}}},
    )[0]
    assert describe(change) == "options.temperature 0 → 0.7"
    added = explain.explain(
        {"provider": {"kind": "o", "model": "m", "options": {}}},
        {"provider": {"kind": "o", "model": "m", "options": {"num_ctx": 8192}}},
    )[0]
    assert describe(added) == "options.num_ctx (unset) → 8192"


def test_miss_fields_first_run_same_key_and_changes():
    detail = CacheDetail(
        provider={"kind": "offline", "model": "m", "options": {}},
        output="text",
        fingerprint="f" * 64,
        templates={"system": None, "prompt": "a" * 64},
        rendered={"system": None, "prompt": "b" * 64},
    )
    parts = {"provider": "1", "step": "2", "input": "3", "code": "4"}
    first = miss_fields(None, "k1", parts, detail)
    assert first == {"reason": "first run of this step", "changed": []}
    same = miss_fields(PreviousRun(7, "j0", "k1", parts, detail.model_dump()), "k1", parts, detail)
    assert same["previous_key"] == "k1" and same["changed"] == [] and "no usable" in same["reason"]
    older = detail.model_dump()
    older["provider"]["model"] = "old-model"
    moved = miss_fields(PreviousRun(7, "j0", "k0", parts, older), "k1", parts, detail)
    assert [(c.part, c.name, c.old, c.new) for c in moved["changed"]] == [
        ("provider", "model", "old-model", "m")
    ]
    assert moved["reason"] == "model old-model → m" and moved["previous_job"] == "j0"
    # an event recorded before details were: the per-part hashes still say which part moved
    legacy = miss_fields(
        PreviousRun(7, "j0", "k0", {**parts, "input": "x"}, None), "k1", parts, detail
    )
    assert [(c.part, c.name) for c in legacy["changed"]] == [("key", "input")]
    # what the executor records validates as a cache.miss
    CacheMiss(cache_key="k1", parts=parts, pipeline="p", detail=detail, **moved)


def test_a_nul_in_the_previous_runs_options_is_recorded_shown_not_refused(tmp_path):
    """An older steplog let `options = { tag = "x\\u0000y" }` through, so a run on record may
    hold a NUL; the next cache.miss names the change with it written out, and is stored."""
    from steplog.eventstore.events import NewEvent
    from steplog.eventstore.record import link
    from steplog.words import visible

    detail = CacheDetail(
        provider={"kind": "offline", "model": "m", "options": {"tag": "xy"}},
        output="text",
        fingerprint="f" * 64,
        templates={"system": None, "prompt": "a" * 64},
        rendered={"system": None, "prompt": "b" * 64},
    )
    older = detail.model_dump()
    older["provider"]["options"] = {"tag": "x\x00y", "k\x00": 1}
    parts = {"provider": "1"}
    fields = miss_fields(PreviousRun(7, "j0", "k0", parts, older), "k1", parts, detail)
    shown = {(c.name, c.old, c.new) for c in fields["changed"]}
    assert shown == {("options.tag", "x\\x00y", "xy"), ("options.k\\x00", 1, None)}
    assert "\x00" not in fields["reason"] and visible(fields["reason"]) == fields["reason"]
    miss = NewEvent.of(CacheMiss(cache_key="k1", parts=parts, detail=detail, **fields), "s")
    link("j", 0, 0, "0" * 64, [(miss.ts, miss.level, miss.type, miss.step, miss.data_json())])


def test_template_inputs_simple_and_jinja():
    assert template_inputs("Design {{ inputs.idea }} for {{ inputs.who }}.") == {"idea", "who"}
    assert template_inputs("{% if inputs['idea'] %}{{ inputs.idea | upper }}{% endif %}") == {
        "idea"
    }
    assert template_inputs("{% for k, v in inputs.items() %}{{ v }}{% endfor %}") is None
    assert template_inputs("{% for k in inputs %}{{ k }}{% endfor %}") is None
    assert template_inputs("no inputs: {{ steps.a.output }}") == frozenset()


def test_detail_names_only_the_inputs_and_upstream_a_step_reads():
    pipeline = parse_pipeline(
        """
name = "p"
[inputs.idea]
default = "x"
[inputs.unused]
default = "y"
[providers.local]
kind = "offline"
[steps.a]
provider = "local"
prompt = "{{ inputs.idea }}"
[steps.b]
needs = ["a"]
provider = "local"
prompt = "{{ steps.a.output }}"
"""
    )
    inputs = {"idea": "x", "unused": "y"}
    a = explain.cache_detail(pipeline, "a", system=None, prompt="x", inputs=inputs, upstream={})
    assert set(a.inputs) == {"idea"} and a.upstream == {} and a.templates["system"] is None
    assert a.provider == {"kind": "offline", "model": "offline-1", "options": {}}
    b = explain.cache_detail(
        pipeline,
        "b",
        system=None,
        prompt="A",
        inputs=inputs,
        upstream={"a": StepOutput("text", "A", "A").sha256},
    )
    assert b.inputs == {} and b.upstream == {"a": hashlib.sha256(b"A").hexdigest()}


def test_the_previous_run_is_found_through_the_partial_index(store):

    plan = store.conn.execute(
        "EXPLAIN QUERY PLAN " + store.cache_runs_sql(), ("step", "pipeline", 10)
    ).fetchall()
    assert any("USING INDEX events_cache_runs" in row[-1] for row in plan), plan
    assert not any("TEMP B-TREE" in row[-1] for row in plan), plan  # no sort: seq is in the index


def test_previous_run_is_the_latest_cache_event_of_that_pipeline_and_step(store):
    from steplog.eventstore.events import CacheHit, NewEvent
    from steplog.executor.cachehistory import previous_run

    def event(key: str, pipeline: str | None, step: str = "s") -> NewEvent:
        data = CacheHit(cache_key=key, response_sha256="r", origin_job="o", pipeline=pipeline)
        return NewEvent.of(data, step=step)

    store.append("a", [event("k1", "p"), event("k2", "q"), event("k3", "p", step="t")])
    store.append("b", [event("k4", "p"), event("k5", None)])
    found = previous_run(store, "p", "s")
    assert found is not None and (found.cache_key, found.job_id) == ("k4", "b")
    assert previous_run(store, "q", "s").cache_key == "k2"
    assert previous_run(store, "p", "t").cache_key == "k3"
    assert previous_run(store, "p", "nope") is None


def test_a_miss_is_explained_against_the_closest_previous_run_not_the_latest(tmp_path):
    """After runs on two topics, editing one prompt is explained against the run on the same
    topic (the prompt changed), not against the latest run (another topic: its input)."""
    from steplog import Steplog

    source = """
name = "topics"
[inputs.topic]
[providers.local]
kind = "offline"
[steps.outline]
provider = "local"
prompt = "Outline {{ inputs.topic }}."
[steps.essay]
needs = ["outline"]
provider = "local"
prompt = "Write {{ steps.outline.output }}"
"""
    path = tmp_path / "p.toml"
    path.write_text(source)
    with Steplog(tmp_path / "s.db") as sl:
        sl.run(path, {"topic": "owls"}, "owls", tmp_path / "w1").raise_for_status()
        sl.run(path, {"topic": "tides"}, "tides", tmp_path / "w2").raise_for_status()
        path.write_text(source.replace("Outline {{", "Outline briefly {{"))
        plan = sl.plan(path, {"topic": "owls"})
        outline, essay = plan.steps
        assert (outline.action, outline.previous_job) == ("miss", "owls")
        assert outline.reason.startswith("prompt template changed"), outline.reason
        assert "input" not in outline.reason
        assert essay.action == "depends" and essay.previous_job == "owls"
        # the run itself records the same explanation in its cache.miss
        sl.run(path, {"topic": "owls"}, "again", tmp_path / "w3").raise_for_status()
        (miss,) = [e for e in sl.events("again", type="cache.miss") if e.step == "outline"]
        assert miss.data["previous_job"] == "owls"
        assert miss.data["reason"] == outline.reason
