"""Pipeline validation: every bad pipeline is refused with one line naming the problem."""

from __future__ import annotations

import json
import textwrap

import pytest

from steplog.executor.pipeline import PipelineError, parse_pipeline, topological_order

GOOD = textwrap.dedent(
    """\
    name = "t"

    [inputs.idea]
    default = "x"

    [providers.local]
    kind = "offline"

    [steps.a]
    provider = "local"
    prompt = "design {{ inputs.idea }}"

    [steps.b]
    needs = ["a"]
    provider = "local"
    prompt = "build {{ steps.a.output }}"
    output = "files"

    [steps.c]
    needs = ["b"]
    provider = "local"
    prompt = "{% for p, c in steps.b.files.items() %}{{ p }}{% endfor %} {{ steps.a.output }}"
    """
)


def refuse(source: str) -> str:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(source, "p.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_pipeline_loads_in_dependency_order():
    p = parse_pipeline(GOOD, "p.toml")
    assert p.order == ["a", "b", "c"]
    assert p.downstream({"a"}) == {"b", "c"}
    assert p.resolve_inputs({}) == {"idea": "x"}
    assert p.resolve_inputs({"idea": "y"}) == {"idea": "y"}


def test_cycle_is_named():
    source = GOOD.replace(
        '[steps.a]\nprovider = "local"', '[steps.a]\nneeds = ["c"]\nprovider = "local"'
    )
    message = refuse(source)
    assert "cycle" in message and "a" in message and "c" in message


def test_unknown_dependency():
    assert "needs unknown step 'nope'" in refuse(GOOD.replace('needs = ["a"]', 'needs = ["nope"]'))


def test_unknown_provider():
    message = refuse(
        GOOD.replace(
            '[steps.c]\nneeds = ["b"]\nprovider = "local"',
            '[steps.c]\nneeds = ["b"]\nprovider = "cloud"',
        )
    )
    assert "unknown provider 'cloud'" in message


def test_unknown_key_names_key_and_line():
    message = refuse(GOOD.replace('prompt = "design', 'promt = "oops"\nprompt = "design'))
    assert "unknown key 'steps.a.promt'" in message
    assert "(line 11)" in message


def test_template_unknown_input_and_variable():
    assert "unknown input 'topic'" in refuse(
        GOOD.replace("{{ inputs.idea }}", "{{ inputs.topic }}")
    )
    assert "unknown variable 'idea'" in refuse(GOOD.replace("{{ inputs.idea }}", "{{ idea }}"))


def test_template_reading_a_step_that_is_not_upstream():
    source = GOOD.replace('prompt = "design {{ inputs.idea }}"', 'prompt = "{{ steps.c.output }}"')
    message = refuse(source)
    assert "steps.c" in message and "not upstream" in message


def test_template_syntax_error():
    assert "syntax error" in refuse(GOOD.replace("{{ inputs.idea }}", "{{ inputs.idea "))


def test_bad_toml_and_bad_output_kind():
    assert "not valid TOML" in refuse("name = ")
    assert "steps.a.output" in refuse(
        GOOD.replace('prompt = "design {{ inputs.idea }}"', 'prompt = "x"\noutput = "pdf"')
    )


def test_inputs_required_and_unknown():
    p = parse_pipeline(GOOD.replace('default = "x"', 'description = "no default"'))
    with pytest.raises(PipelineError, match="input 'idea' is required"):
        p.resolve_inputs({})
    with pytest.raises(PipelineError, match="unknown input 'other'"):
        parse_pipeline(GOOD).resolve_inputs({"other": "1"})


def test_step_fingerprint_changes_only_for_the_edited_step():
    before = parse_pipeline(GOOD).step_fingerprints
    after = parse_pipeline(GOOD.replace("design {{", "sketch {{")).step_fingerprints
    assert before["a"] != after["a"]
    assert before["b"] == after["b"] and before["c"] == after["c"]


def test_topological_order_handles_long_chains_without_recursion():
    needs = {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(5000)}
    assert topological_order(needs)[-1] == "s4999"


def test_sandbox_refuses_template_injection():
    from steplog.executor.templates import TemplateProblem, render

    with pytest.raises(TemplateProblem):
        render("{{ ''.__class__.__mro__ }}", {"inputs": {}, "steps": {}}, where="t")


def test_snapshot_round_trip_keeps_spec_fingerprints_and_references():
    p = parse_pipeline(GOOD, "p.toml")
    q = type(p).from_snapshot(p.snapshot(), p.source, p.path)
    assert q is not None and q.spec == p.spec
    assert q.fingerprint == p.fingerprint and q.step_fingerprints == p.step_fingerprints
    assert q.references == p.references == {"a": frozenset(), "b": {"a"}, "c": {"a", "b"}}
    assert q.order == p.order


REMOTE = 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'


@pytest.mark.parametrize(
    "extra", ["[budget]\nmax_cost = inf\n", '[prices."m"]\ninput_per_mtok = nan\n']
)
def test_non_finite_numbers_are_refused_at_load(extra):
    """inf/NaN passed validation and then crashed storing the pipeline snapshot (traceback)."""
    assert "Input should be a finite number" in refuse(GOOD + extra)


@pytest.mark.parametrize(
    "provider",
    [
        REMOTE + "timeout_s = inf\n",
        REMOTE + "requests_per_minute = nan\n",
        'kind = "offline"\noptions = { temperature = inf }\n',
        'kind = "offline"\noptions = { t = [1, -inf] }\n',
        'kind = "offline"\noptions = { at = 07:32 }\n',  # TOML times and dates: no JSON form
        'kind = "offline"\noptions = { on = [1979-05-27] }\n',
        REMOTE + 'organization = "orgä"\n',
        REMOTE + 'project = "my project"\n',
    ],
)
def test_provider_values_that_cannot_be_stored_or_sent_are_refused_at_load(provider):
    """A non-finite number crashed storing the pipeline; a header value that is not printable
    ASCII failed each step with UnicodeEncodeError mid-job; a TOML time in the options failed
    the first step with a traceback (its cache key could not be written)."""
    source = GOOD.replace('[providers.local]\nkind = "offline"\n', f"[providers.local]\n{provider}")
    message = refuse(source)
    assert "providers.local." in message


def test_a_template_nesting_too_deep_to_parse_is_one_line():
    """jinja's parser recursed past Python's limit: a RecursionError traceback at load."""
    deep = "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}"
    message = refuse(GOOD.replace('prompt = "design {{ inputs.idea }}"', f'prompt = "{deep}"'))
    assert "nests too deeply to parse" in message


def test_a_snapshot_from_an_older_format_is_not_trusted():
    p = parse_pipeline(GOOD, "p.toml")
    old = json.loads(p.snapshot())
    del old["format"]  # what steplog wrote before references covered dynamic reads
    assert type(p).from_snapshot(json.dumps(old), p.source, p.path) is None


def test_a_template_reading_steps_dynamically_references_every_upstream_step():
    source = textwrap.dedent(
        """\
        name = "t"
        [providers.local]
        kind = "offline"
        [steps.a]
        provider = "local"
        prompt = "a"
        [steps.aside]
        provider = "local"
        prompt = "not upstream of c"
        [steps.b]
        needs = ["a"]
        provider = "local"
        prompt = "b {{ steps.a.output }}"
        [steps.c]
        needs = ["b"]
        provider = "local"
        prompt = "c {% for name in steps %}{{ steps[name].output }}{% endfor %}"
        """
    )
    p = parse_pipeline(source, "p.toml")
    assert p.references["c"] == {"a", "b"}  # all upstream, not only the direct need
    assert p.references["b"] == {"a"} and p.references["aside"] == set()


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('kind = "offline"\n', 'kind = "offline"\nmodel = "m\\u0000"\n', "providers.local.model"),
        (
            'kind = "offline"\n',
            'kind = "offline"\noptions = { "k\\u0000" = 1 }\n',
            "providers.local.options",
        ),
        (
            'prompt = "design',
            'options = { k = ["v\\u0000"] }\nprompt = "design',
            "steps.a.options.k.0",
        ),
    ],
)
def test_a_nul_in_a_setting_the_events_record_is_refused_at_load(old, new, where):
    source = GOOD.replace(old, new, 1)
    assert f"{where}: must not contain a NUL character" in refuse(source)
