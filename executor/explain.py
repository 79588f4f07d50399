"""Why a step's cache key changed: what went into the key (a CacheDetail) and the differences.

Pure: `cache_detail` describes one key from values the caller already has, `explain` compares
two details, `miss_fields` turns the previous run into the fields every cache.miss records.
The executor and `steplog plan` both use these, so a prediction and the event it predicts say
the same thing. The key itself is computed by executor.cachekey and is not changed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from jinja2 import TemplateSyntaxError, nodes

from steplog.eventstore.events import CacheChange, CacheDetail
from steplog.eventstore.record import text_sha256
from steplog.executor.cachekey import canonical_json
from steplog.executor.pipeline import Pipeline
from steplog.executor.templates import TREE_CACHE, simple_plan, static_key, syntax_tree

SHORT = 12
_UNSET = object()
# Parts of a detail that come from the step's definition: when one of them changed, a changed
# fingerprint says nothing more.
_DEFINITION_PARTS = ("provider", "output", "template")
# Parts that make the rendered text differ: when one changed, the rendered hashes differ too.
_RENDER_CAUSES = ("template", "input", "upstream")


@lru_cache(maxsize=TREE_CACHE)
def _template_sha(source: str) -> str:
    return text_sha256(source)


_NO_INPUTS: frozenset[str] = frozenset()  # shared: most templates of a large pipeline read none


@lru_cache(maxsize=TREE_CACHE)
def template_inputs(source: str) -> frozenset[str] | None:
    """The inputs a template reads, or None when it reads `inputs` in a way not known statically."""
    found = _template_inputs(source)
    return _NO_INPUTS if found is not None and not found else found


def _template_inputs(source: str) -> frozenset[str] | None:
    plan = simple_plan(source)
    if plan is not None:
        names: set[str] = set()
        for piece in plan:
            if isinstance(piece, tuple) and piece[0] == "inputs":
                if len(piece) < 2:
                    return None
                names.add(piece[1])
        return frozenset(names)
    try:
        tree = syntax_tree(source)
    except TemplateSyntaxError:
        return None
    names = set()
    static_bases: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if isinstance(base, nodes.Name) and base.name == "inputs":
            key = static_key(node)
            if key is None or hasattr(dict, key):  # inputs.items() and the like read them all
                return None
            names.add(key)
            static_bases.add(id(base))
    for name in tree.find_all(nodes.Name):
        if name.name == "inputs" and name.ctx == "load" and id(name) not in static_bases:
            return None  # e.g. {% for k, v in inputs.items() %} reads every input
    return frozenset(names)


def step_inputs(pipeline: Pipeline, step: str, inputs: Mapping[str, str]) -> dict[str, str]:
    """The job inputs a step's templates read (all of them when that cannot be told)."""
    spec = pipeline.spec.steps[step]
    read: set[str] = set()
    for source in (spec.system, spec.prompt):
        if not source:
            continue
        names = template_inputs(source)
        if names is None:
            return dict(inputs)
        read |= names
    return {k: v for k, v in inputs.items() if k in read}


def cache_detail(
    pipeline: Pipeline,
    step: str,
    *,
    system: str | None,
    prompt: str,
    inputs: Mapping[str, str],
    upstream: Mapping[str, str],
) -> CacheDetail:
    """The detail of one key. `upstream` maps each upstream step the templates read to the
    sha256 of its output blob."""
    spec = pipeline.spec.steps[step]
    return CacheDetail.model_construct(
        provider=pipeline.cache_identity_for(step),
        output=spec.output,
        fingerprint=pipeline.step_fingerprints[step],
        templates={
            "system": _template_sha(spec.system) if spec.system else None,
            "prompt": _template_sha(spec.prompt),
        },
        rendered={
            "system": text_sha256(system) if system is not None else None,
            "prompt": text_sha256(prompt),
        },
        inputs={k: text_sha256(v) for k, v in sorted(step_inputs(pipeline, step, inputs).items())},
        upstream={name: upstream[name] for name in sorted(upstream)},
    )


def _as_dict(detail: CacheDetail | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(detail, CacheDetail):
        return detail.model_dump()
    return dict(detail)


def _same(a: Any, b: Any) -> bool:
    """Equal as the key sees them: 0 and 0.0, or 1 and true, are different values."""
    if a is _UNSET or b is _UNSET:
        return a is b
    return canonical_json(a) == canonical_json(b)


def _short(value: Any) -> Any:
    return value[:SHORT] if isinstance(value, str) else value


def _compare_maps(
    part: str, old: Mapping[str, Any], new: Mapping[str, Any], *, prefix: str = "", short: bool
) -> list[CacheChange]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, _UNSET), new.get(name, _UNSET)
        if not _same(a, b):
            a, b = (None if a is _UNSET else a), (None if b is _UNSET else b)
            if short:
                a, b = _short(a), _short(b)
            out.append(CacheChange(part=part, name=prefix + name, old=a, new=b))
    return out


def explain(
    previous: CacheDetail | Mapping[str, Any], current: CacheDetail | Mapping[str, Any]
) -> list[CacheChange]:
    """What differs between two details, causes first: provider (kind, model, each option),
    output kind, templates, inputs, upstream outputs; the rendered text only when none of its
    causes changed, the step definition only when no part of it named above changed."""
    old, new = _as_dict(previous), _as_dict(current)
    changes: list[CacheChange] = []
    old_p, new_p = dict(old.get("provider") or {}), dict(new.get("provider") or {})
    old_opts, new_opts = old_p.pop("options", None) or {}, new_p.pop("options", None) or {}
    changes += _compare_maps("provider", old_p, new_p, short=False)
    changes += _compare_maps("provider", old_opts, new_opts, prefix="options.", short=False)
    if not _same(old.get("output"), new.get("output")):
        changes.append(
            CacheChange(part="output", name="output", old=old.get("output"), new=new.get("output"))
        )
    changes += _compare_maps(
        "template", old.get("templates") or {}, new.get("templates") or {}, short=True
    )
    changes += _compare_maps("input", old.get("inputs") or {}, new.get("inputs") or {}, short=True)
    changes += _compare_maps(
        "upstream", old.get("upstream") or {}, new.get("upstream") or {}, short=True
    )
    parts = {c.part for c in changes}
    if not parts & set(_RENDER_CAUSES):
        changes += _compare_maps(
            "rendered", old.get("rendered") or {}, new.get("rendered") or {}, short=True
        )
    if not parts & set(_DEFINITION_PARTS) and not _same(
        old.get("fingerprint"), new.get("fingerprint")
    ):
        changes.append(
            CacheChange(
                part="definition",
                name="fingerprint",
                old=_short(old.get("fingerprint")),
                new=_short(new.get("fingerprint")),
            )
        )
    return changes


def _value(value: Any) -> str:
    if value is None:
        return "(unset)"
    return value if isinstance(value, str) else canonical_json(value)


def describe(change: CacheChange) -> str:
    """One change as a person reads it, e.g. `options.temperature 0 → 0.7`."""
    arrow = f"{_value(change.old)} → {_value(change.new)}"
    if change.part == "provider":
        return f"{change.name} {arrow}"
    if change.part == "output":
        return f"output kind {arrow}"
    label = {
        "template": {"prompt": "prompt template", "system": "system prompt"}.get(
            change.name, f"{change.name} template"
        ),
        "input": f"input {change.name}",
        "upstream": f"upstream {change.name} output",
        "rendered": f"rendered {change.name}",
        "definition": "step definition",
        "key": f"key part {change.name}",
    }.get(change.part, f"{change.part} {change.name}")
    return f"{label} changed ({arrow})"


@dataclass(frozen=True)
class PreviousRun:
    """A cache.hit/cache.miss of a step (same pipeline name, any job) to compare a key with."""

    seq: int
    job_id: str
    cache_key: str
    parts: dict[str, str]
    detail: dict[str, Any] | None
    job_inputs: dict[str, str] | None = None  # the inputs its job ran with (None: not read)


FIRST_RUN = "first run of this step"


def _part_changes(previous: PreviousRun, parts: Mapping[str, str]) -> list[CacheChange]:
    """Which key parts differ, from their hashes (all a run recorded before details were)."""
    return [
        CacheChange(
            part="key",
            name=name,
            old=_short(previous.parts.get(name)),
            new=_short(parts.get(name)),
        )
        for name in sorted(set(previous.parts) | set(parts))
        if previous.parts.get(name) != parts.get(name)
    ]


def changes_since(
    previous: PreviousRun,
    detail: CacheDetail | Mapping[str, Any] | None,
    parts: Mapping[str, str],
    *,
    unknown: tuple[str, ...] = (),
) -> list[CacheChange]:
    """What changed since `previous`; parts named in `unknown` are taken as they were then."""
    if previous.detail is None or detail is None:
        return _part_changes(previous, parts)
    current = _as_dict(detail)
    for part in unknown:
        current[part] = previous.detail.get(part)
    return explain(previous.detail, current)


def closest(
    runs: list[PreviousRun],
    detail: CacheDetail | Mapping[str, Any] | None,
    parts: Mapping[str, str],
    *,
    unknown: tuple[str, ...] = (),
    job_inputs: Mapping[str, str] | None = None,
) -> PreviousRun:
    """The run whose key differs least from this one: fewest changed step inputs first, then
    a job run over the same inputs (the run a person compares with), then fewest changes,
    then the latest. `runs` is newest first."""

    def distance(ranked: tuple[int, PreviousRun]) -> tuple[int, int, int, int]:
        order, run = ranked
        changed = changes_since(run, detail, parts, unknown=unknown)
        inputs = sum(c.part == "input" or (c.part == "key" and c.name == "input") for c in changed)
        other_job_inputs = int(job_inputs is not None and run.job_inputs != dict(job_inputs))
        return (inputs, other_job_inputs, len(changed), order)

    return min(enumerate(runs), key=distance)[1]


def miss_fields(
    previous: PreviousRun | None, key: str, parts: Mapping[str, str], detail: CacheDetail
) -> dict[str, Any]:
    """reason, changed, previous_key, previous_job, previous_seq for a cache.miss."""
    if previous is None:
        return {"reason": FIRST_RUN, "changed": []}
    found = {
        "previous_key": previous.cache_key,
        "previous_job": previous.job_id,
        "previous_seq": previous.seq,
    }
    if previous.cache_key == key:
        reason = "same key as the previous run, but no usable answer is cached for it"
        return {"reason": reason, "changed": [], **found}
    changed = [_without_nul(c) for c in changes_since(previous, detail, parts)]
    reason = "; ".join(describe(c) for c in changed) or "the key changed"
    return {"reason": reason, "changed": changed, **found}


def _without_nul(change: CacheChange) -> CacheChange:
    """A change as a cache.miss can record it: a NUL (which an older steplog let into a
    pipeline's options, so a run on record may hold one) written as the text `\\x00`, since
    the stores refuse a NUL in this event (NewEvent.data_json)."""
    if "\\u0000" not in canonical_json([change.name, change.old, change.new]):
        return change
    return CacheChange(
        part=change.part,
        name=_nul_shown(change.name),
        old=_nul_shown(change.old),
        new=_nul_shown(change.new),
    )


def _nul_shown(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, list):
        return [_nul_shown(item) for item in value]
    if isinstance(value, dict):
        return {_nul_shown(k): _nul_shown(v) for k, v in value.items()}
    return value
