"""Cache keys: stable under dict order, different for any change of what decides the answer."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.cachekey import cache_key, canonical_json, key_parts
from providers.config import ProviderConfig

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                         st.floats(allow_nan=False, allow_infinity=False))  # fmt: skip
options_st = st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=6)


def shuffled(d: dict) -> dict:
    items = list(d.items())
    random.Random(len(items)).shuffle(items)
    return dict(reversed(items))


def make_key(
    kind="offline",
    model="m",
    options=None,
    step="s",
    system="sys",
    prompt="p",
    output="text",
    fp="f",
):
    config = ProviderConfig(kind=kind, model=model, base_url="http://127.0.0.1:1/v1")
    parts = key_parts(
        provider=config.cache_identity(model, options if options is not None else {"t": 0}),
        step=step,
        rendered={"system": system, "prompt": prompt, "output": output},
        fingerprint=fp,
    )
    return cache_key(parts), parts


@settings(max_examples=200, deadline=None)
@given(options_st)
def test_key_ignores_dict_order(options):
    assert make_key(options=options)[0] == make_key(options=shuffled(options))[0]
    assert canonical_json(options) == canonical_json(shuffled(options))


@settings(max_examples=200, deadline=None)
@given(options_st, st.text(min_size=1, max_size=8), json_scalars)
def test_key_changes_when_an_option_changes(options, name, value):
    changed = {**options, name: value}
    if canonical_json(changed) == canonical_json(options):
        return  # same value set again: the same request
    assert make_key(options=options)[0] != make_key(options=changed)[0]


@pytest.mark.parametrize(
    ("field", "value", "part"),
    [
        ("kind", "openai", "provider"), ("model", "m2", "provider"), ("options", {"t": 1}, "provider"),
        ("step", "s2", "step"), ("system", "sys2", "input"), ("prompt", "p2", "input"),
        ("output", "json", "input"), ("fp", "f2", "code"),
    ],
)  # fmt: skip
def test_each_field_changes_the_key_and_exactly_its_part(field, value, part):
    base_key, base_parts = make_key()
    key, parts = make_key(**{field: value})
    assert key != base_key
    assert {name for name in parts if parts[name] != base_parts[name]} == {part}


def test_identity_never_includes_secrets_urls_or_timeouts():
    config = ProviderConfig(kind="openai", model="m", base_url="http://u:p@127.0.0.1:9/v1",
                            api_key_env="SECRET_VAR", timeout_s=5, max_retries=7)  # fmt: skip
    text = canonical_json(config.cache_identity("m", {"temperature": 0}))
    for leaked in ("SECRET_VAR", "127.0.0.1", "u:p", "timeout", "retries"):
        assert leaked not in text


def test_canonical_json_is_stable_and_refuses_nan():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})
