"""Cache keys: blind to dict order, changed by any single field, never built from secrets.

A key is sha256 over canonical JSON of four parts (provider identity, step, rendered input,
code fingerprint), built the way executor.step builds it (through Pipeline.key_for).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from steplog.executor.cachekey import KEY_VERSION, cache_key, canonical_json, key_parts
from steplog.providers.config import ProviderConfig

SETTINGS = settings(max_examples=100, deadline=None)

# JSON values as TOML options and rendered templates can hold them (string keys only).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
option_dicts = st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6)


def reordered(value: Any, rnd: random.Random) -> Any:
    """The same value with every dict (at any depth) rebuilt in a shuffled insertion order."""
    if isinstance(value, dict):
        items = [(k, reordered(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    return value


FIELDS = {
    # field: the part of the key it belongs to
    "kind": "provider",
    "model": "provider",
    "options": "provider",
    "step": "step",
    "system": "input",
    "prompt": "input",
    "output": "input",
    "fingerprint": "code",
}


def build(
    kind: str = "offline",
    model: str = "m",
    options: dict[str, Any] | None = None,
    step: str = "s",
    system: str | None = "sys",
    prompt: str = "p",
    output: str = "text",
    fingerprint: str = "f" * 64,
    config: ProviderConfig | None = None,
) -> tuple[str, dict[str, str]]:
    """(key, parts) as the executor computes them."""
    config = config or ProviderConfig(kind=kind, model=model)  # type: ignore[arg-type]
    parts = key_parts(
        provider=config.cache_identity(model, options if options is not None else {}),
        step=step,
        rendered={"system": system, "prompt": prompt, "output": output},
        fingerprint=fingerprint,
    )
    return cache_key(parts), parts


requests = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["offline", "openai"]),
        "model": st.text(max_size=12),
        "options": option_dicts,
        "step": st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,11}", fullmatch=True),
        "system": st.none() | st.text(max_size=40),
        "prompt": st.text(max_size=80),
        "output": st.sampled_from(["text", "json", "files"]),
        "fingerprint": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    }
)


@SETTINGS
@given(requests, st.randoms(use_true_random=False))
def test_the_key_ignores_dict_key_order_in_options_and_rendered_input(request, rnd):
    key, parts = build(**request)
    shuffled = {**request, "options": reordered(request["options"], rnd)}
    assert build(**shuffled) == (key, parts)
    # the rendered dict itself, in another insertion order
    rendered = {k: request[k] for k in ("system", "prompt", "output")}
    identity = ProviderConfig(kind=request["kind"], model=request["model"]).cache_identity(
        request["model"], request["options"]
    )
    again = key_parts(
        provider=reordered(identity, rnd),
        step=request["step"],
        rendered=reordered(rendered, rnd),
        fingerprint=request["fingerprint"],
    )
    assert again == parts and cache_key(reordered(again, rnd)) == key


def other_value(draw, field: str, old: Any) -> Any:
    new = draw(
        {
            "kind": st.sampled_from(["offline", "openai"]),
            "model": st.text(max_size=12),
            "step": st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,11}", fullmatch=True),
            "system": st.none() | st.text(max_size=40),
            "prompt": st.text(max_size=80),
            "output": st.sampled_from(["text", "json", "files"]),
            "fingerprint": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        }[field]
    )
    assume(new != old)
    return new


@SETTINGS
@given(requests, st.sampled_from([f for f in FIELDS if f != "options"]), st.data())
def test_changing_any_single_field_changes_the_key_and_only_its_part(request, field, data):
    key, parts = build(**request)
    changed = {**request, field: other_value(data.draw, field, request[field])}
    new_key, new_parts = build(**changed)
    assert new_key != key
    assert {name for name in parts if parts[name] != new_parts[name]} == {FIELDS[field]}


@SETTINGS
@given(requests.filter(lambda r: r["options"]), st.data())
def test_changing_any_single_option_value_changes_the_key_and_only_the_provider_part(request, data):
    options = request["options"]
    name = data.draw(st.sampled_from(sorted(options)), label="option")
    value = data.draw(json_values, label="new value")
    # a different JSON value (1 and 1.0 and True are different requests; equal text is not)
    assume(canonical_json(value) != canonical_json(options[name]))
    key, parts = build(**request)
    new_key, new_parts = build(**{**request, "options": {**options, name: value}})
    assert new_key != key
    assert {n for n in parts if parts[n] != new_parts[n]} == {"provider"}
    # adding or removing an option is a change too
    fewer = {k: v for k, v in options.items() if k != name}
    assert build(**{**request, "options": fewer})[0] != key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "openai"),
        ("model", "m2"),
        ("options", {"temperature": 0.5}),
        ("step", "s2"),
        ("system", None),
        ("system", ""),
        ("prompt", "p "),
        ("output", "json"),
        ("fingerprint", "e" * 64),
    ],
)
def test_each_field_has_its_own_part(field, value):
    key, parts = build(options={"temperature": 0})
    new_key, new_parts = build(**{"options": {"temperature": 0}, field: value})
    assert new_key != key
    assert {n for n in parts if parts[n] != new_parts[n]} == {FIELDS[field]}
    assert set(parts) == {"provider", "step", "input", "code"}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in parts.values())


@SETTINGS
@given(json_values, st.randoms(use_true_random=False))
def test_canonical_json_is_one_text_per_value(value, rnd):
    text = canonical_json(value)
    assert canonical_json(value) == text  # stable
    assert canonical_json(reordered(value, rnd)) == text  # blind to insertion order
    assert canonical_json(json.loads(text)) == text  # a fixed point: parsing changes nothing
    assert json.loads(text) == value  # and it says what the value is
    assert not any(ch in text for ch in "\n\r\t\x00")  # one line, control characters escaped


def reference_json(value: Any) -> str:
    """What canonical_json's text is defined as (cachekey._ENCODER): keys it has written stay
    the keys of the same requests, whichever encoder writes the text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# Beyond json_values: every character (a lone surrogate too), ints past 64 bits, tuples, and
# values orjson would write differently (floats) or where json refuses (its own types).
any_char_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
wide_values = st.recursive(
    st.one_of(
        scalars,
        any_char_text,
        st.sampled_from(["\ud800", "a\udfffb", "\x7f\u2028\u2029", "\ufeff"]),
        st.integers(),
        st.integers(min_value=2**63, max_value=2**65),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(any_char_text, inner, max_size=4)
    ),
    max_leaves=24,
)


@settings(max_examples=400, deadline=None)
@given(wide_values)
def test_canonical_json_is_the_reference_text_whichever_encoder_writes_it(value):
    assert canonical_json(value) == reference_json(value)


def test_canonical_json_is_the_reference_text_past_orjson_depth_and_for_other_types():
    deep: list[Any] = []
    inner = deep
    for _ in range(300):  # past orjson's nesting limit: the encoder writes it
        inner.append([])
        inner = inner[0]
    assert canonical_json(deep) == reference_json(deep)
    assert canonical_json({"k": [1, 2.5, True]}) == '{"k":[1,2.5,true]}'
    assert canonical_json(1e-07) == reference_json(1e-07) == "1e-07"
    import datetime
    import enum

    class Level(enum.IntEnum):
        LOW = 1

    assert canonical_json({"level": Level.LOW}) == reference_json({"level": Level.LOW})
    with pytest.raises(TypeError):  # json refuses it; orjson would have written it
        canonical_json({"at": datetime.date(2026, 12, 5)})
    assert canonical_json({1: "an int key"}) == '{"1":"an int key"}'  # json's own conversion
    with pytest.raises(TypeError):
        canonical_json({"a": object()})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError):  # a cycle: the encoder's error, not a hang
        canonical_json(looped)


def test_canonical_json_exact_text():
    value = {"b": 1, "a": [1, "é", None, True, 1.5]}
    assert canonical_json(value) == '{"a":[1,"é",null,true,1.5],"b":1}'
    assert canonical_json({"z": {"y": 1, "x": 2}}) == '{"z":{"x":2,"y":1}}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinity_at_any_depth(bad):
    for value in (bad, {"x": bad}, [1, {"y": [bad]}]):
        with pytest.raises(ValueError):
            canonical_json(value)
    with pytest.raises(ValueError):
        build(options={"temperature": bad})


def test_the_key_is_versioned(monkeypatch):
    import steplog.executor.cachekey

    _, parts = build()
    before = cache_key(parts)
    monkeypatch.setattr(steplog.executor.cachekey, "KEY_VERSION", KEY_VERSION + 1)
    assert cache_key(parts) != before  # the version is part of what the key hashes
    assert KEY_VERSION == 1  # changing it invalidates every cached answer: do it on purpose


@SETTINGS
@given(
    st.sampled_from(["offline", "openai", "ollama", "anthropic"]),
    st.text(max_size=12),
    option_dicts,
    st.none() | st.text(min_size=1, max_size=20),
    st.none() | st.text(min_size=1, max_size=40),
    st.floats(min_value=0.001, max_value=1e6),
    st.integers(0, 20),
    st.booleans(),
)
def test_provider_identity_never_holds_the_key_variable_url_or_timeouts(
    kind, model, options, api_key_env, base_url, timeout_s, max_retries, stream
):
    plain = ProviderConfig(kind=kind, model=model)
    loaded = ProviderConfig(
        kind=kind,
        model=model,
        api_key_env=api_key_env,
        base_url=base_url,
        timeout_s=timeout_s,
        max_retries=max_retries,
        stream=stream,
    )
    identity = loaded.cache_identity(model, options)
    assert identity == plain.cache_identity(model, options)
    assert set(identity) == {"kind", "model", "options"}
    assert build(config=loaded, model=model, options=options) == build(
        config=plain, model=model, options=options
    )


def test_provider_identity_text_shows_no_secret_url_or_timeout():
    config = ProviderConfig(
        kind="openai",
        model="gpt-x",
        base_url="https://user:pw@api.example.invalid/v1",
        api_key_env="MY_SECRET_KEY_VAR",
        timeout_s=12.5,
        max_retries=7,
    )
    text = canonical_json(config.cache_identity("gpt-x", {"temperature": 0}))
    for leaked in (
        "MY_SECRET_KEY_VAR",
        "example.invalid",
        "user:pw",
        "12.5",
        "timeout",
        "base_url",
        "api_key",
    ):
        assert leaked not in text


MEMO_PIPELINE = """
name = "memo"

[providers.local]
kind = "offline"

[providers.other]
kind = "offline"
model = "other-model"

[steps.a]
prompt = "a"
provider = "local"

[steps.b]
prompt = "b"
provider = "other"
output = "json"
options = { temperature = 0.5 }

[steps.c]
needs = ["a"]
system = "be brief"
prompt = "c {{ steps.a.output }}"
provider = "local"
output = "files"
"""


@SETTINGS
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.none() | st.text(max_size=20), st.text()),
        min_size=1,
        max_size=12,
    )
)
def test_key_for_equals_the_key_built_from_scratch_however_often_a_step_asks(calls):
    """Pipeline.key_for hashes a step's provider, step and code parts once; every call after
    the first must still give exactly what key_parts gives, parts in the events' order."""
    from steplog.executor.pipeline import parse_pipeline

    pipeline = parse_pipeline(MEMO_PIPELINE, None)
    for step, system, prompt in calls:
        parts, key = pipeline.key_for(step, system, prompt)
        expected = key_parts(
            provider=pipeline.cache_identity_for(step),
            step=step,
            rendered={
                "system": system,
                "prompt": prompt,
                "output": pipeline.spec.steps[step].output,
            },
            fingerprint=pipeline.step_fingerprints[step],
        )
        assert list(parts) == ["provider", "step", "input", "code"]
        assert parts == expected and key == cache_key(expected)
