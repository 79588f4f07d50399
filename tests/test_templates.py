"""The fast path for `{{ a.b }}` templates renders exactly what jinja renders."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.executor.templates import (
    ENV,
    EVERY_UPSTREAM,
    TemplateProblem,
    check_template,
    render,
    simple_plan,
)

CONTEXT = {
    "inputs": {"idea": "a todo list", "n": "3"},
    "steps": {
        "a": {"output": "design text\nline 2", "files": {}},
        "b": {"output": {"k": [1, 2]}, "files": {"x.py": "print(1)"}},
    },
}
HOLES = [
    "{{ inputs.idea }}",
    "{{inputs.n}}",
    "{{ steps.a.output }}",
    "{{ steps.b.output }}",
    "{{ steps.b.files }}",
    "{{ inputs }}",
]
TEXT = st.text(
    alphabet=st.characters(blacklist_characters="{}%#\r", blacklist_categories=("Cs",)), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(TEXT, st.sampled_from(HOLES)), max_size=8))
def test_fast_path_equals_jinja(pieces):
    source = "".join(pieces)
    assert simple_plan(source) is not None
    assert render(source, CONTEXT, where="t") == ENV.from_string(source).render(CONTEXT)


def test_templates_with_jinja_features_take_the_jinja_path():
    for source in (
        "{% if inputs.idea %}x{% endif %}",
        "{{ inputs.idea | upper }}",
        "{# c #}",
        "{{- inputs.idea }}",
    ):
        assert simple_plan(source) is None
        assert render(source, CONTEXT, where="t") == ENV.from_string(source).render(CONTEXT)


def test_missing_names_raise_the_same_problem_on_both_paths():
    for source in ("{{ inputs.nope }}", "{% if 1 %}{{ inputs.nope }}{% endif %}"):
        try:
            render(source, CONTEXT, where="t")
        except TemplateProblem as exc:
            assert "nope" in str(exc)
        else:
            raise AssertionError(source)


def test_checks_agree_between_paths():
    for source in (
        "{{ inputs.idea }} {{ steps.a.output }}",
        "{% if 1 %}{{ inputs.idea }}{{ steps.a.output }}{% endif %}",
    ):
        assert check_template(source, where="t", inputs={"idea"}) == {"a"}
    for source in ("{{ steps.a.outptu }}", "{% if 1 %}{{ steps.a.outptu }}{% endif %}"):
        try:
            check_template(source, where="t", inputs={"idea"})
        except TemplateProblem as exc:
            assert "outptu" in str(exc)
        else:
            raise AssertionError(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ steps }}",
        "{% for name in steps %}{{ name }}{% endfor %}",
        "{% for name, s in steps.items() %}{{ s.output }}{% endfor %}",
        "{{ steps[inputs.idea].output }}",
        "{{ steps.a.output }} {{ (steps|list)|length }}",
    ],
)
def test_a_template_reading_steps_dynamically_reads_every_upstream_step(source):
    found = check_template(source, where="t", inputs={"idea"})
    assert EVERY_UPSTREAM in found
    assert found - {EVERY_UPSTREAM} <= {"a"}


def test_static_reads_name_only_the_steps_they_read():
    for source in ("{{ steps.a.output }}", "{% if 1 %}{{ steps['a'].files }}{% endif %}"):
        assert check_template(source, where="t", inputs=set()) == {"a"}
    # a template that assigns `steps` may read it before or after: taken as reading every step
    for source in (
        "{% set steps = steps %}{{ steps.a.output }}",
        "{% for steps in [1] %}{% endfor %}{{ steps.a.output }}",
        "{% set steps = steps|dictsort %}{% for n, s in steps %}{{ s.output }}{% endfor %}",
    ):
        assert EVERY_UPSTREAM in check_template(source, where="t", inputs=set()), source
