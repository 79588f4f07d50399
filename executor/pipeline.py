"""The pipeline file: parse, validate (keys, DAG, providers, templates), fingerprint.

Everything here is pure: `parse_pipeline(text, path)` either returns a Pipeline or raises
PipelineError with one line naming the problem, before any event is written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import orjson
import tomli
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steplog.errors import Rejected
from steplog.eventstore.events import finite_json
from steplog.executor.budget import Budget, Price
from steplog.executor.cachekey import cache_key, canonical_json, fixed_parts, parts_with
from steplog.executor.templates import EVERY_UPSTREAM, TemplateProblem, check_template, render
from steplog.providers.config import (
    ProviderConfig,
    literal_url_credential,
    url_env_names,
    url_problem,
)
from steplog.words import error_path

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def did_you_mean(name: str, known: list[str]) -> str:
    """ "; did you mean 'x'?" for the nearest known name, or the known names when none is near."""
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f" (steps: {', '.join(sorted(known))})" if known else ""


class PipelineError(Rejected, ValueError):
    """A pipeline that cannot run; the message is one line naming the problem."""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    description: str = ""
    default: str | None = None


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    description: str = ""
    needs: list[str] = Field(default_factory=list)
    provider: str
    system: str | None = None
    prompt: str
    output: Literal["text", "json", "files"] = "text"
    model: str | None = Field(default=None, description="overrides the provider's model")
    options: dict[str, Any] = Field(default_factory=dict, description="merged over the provider's")
    on_truncation: Literal["accept", "error"] = Field(
        default="accept", description="an answer cut off at the token limit: keep it or fail"
    )
    _finite_options = field_validator("options")(finite_json)


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    name: str
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig]
    steps: dict[str, StepSpec]
    budget: Budget | None = Field(default=None, description="per-job limits on tokens and cost")
    prices: dict[str, Price] = Field(default_factory=dict, description="model -> USD per Mtok")

    @field_validator("name")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:  # the jobs table holds it, and PostgreSQL's text cannot
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("inputs", "providers", "steps")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid name (letters, digits, _ and -)")
        return value


# Raised when what validation derives changes, so snapshots taken before are not trusted:
# 2 - references hold every upstream step for a template reading `steps` dynamically.
SNAPSHOT_FORMAT = 2


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    source: str
    path: str | None
    # step -> the steps its templates read (`steps.X.…`), filled in by validation
    references: dict[str, frozenset[str]] = field(default_factory=dict)

    def snapshot(self) -> str:
        """The validated pipeline as JSON, so an unchanged file need not be parsed again.
        (Only from_snapshot reads it, as JSON: its exact bytes carry no meaning. The spec is
        pydantic's own JSON, placed as it is: a tenth of the time of dumping its dict.)"""
        return orjson.dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "spec": orjson.Fragment(self.spec.model_dump_json()),
                "references": {k: sorted(v) for k, v in self.references.items()},
                "fingerprint": self.fingerprint,
                "step_fingerprints": self.step_fingerprints,
            }
        ).decode("utf-8")

    @classmethod
    def from_snapshot(cls, snapshot: str, source: str, path: str | None) -> Pipeline | None:
        """Rebuild a pipeline validated earlier (its source's sha256 is the caller's check);
        None when an older steplog took the snapshot, for the caller to validate the source."""
        data = json.loads(snapshot)
        if data.get("format") != SNAPSHOT_FORMAT:
            return None
        pipeline = cls(
            spec=PipelineSpec.model_validate(data["spec"]),
            source=source,
            path=path,
            references=_shared_sets(data["references"]),
        )
        # cached_property values live in __dict__; setting them skips recomputing the hashes
        pipeline.__dict__["fingerprint"] = data["fingerprint"]
        pipeline.__dict__["step_fingerprints"] = data["step_fingerprints"]
        return pipeline

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            canonical_json(self.spec.model_dump(mode="json")).encode()
        ).hexdigest()

    @cached_property
    def order(self) -> list[str]:
        return topological_order({n: s.needs for n, s in self.spec.steps.items()})

    @cached_property
    def step_fingerprints(self) -> dict[str, str]:
        """Each step's definition, hashed: editing a step changes its fingerprint only."""
        out = {}
        for name, step in self.spec.steps.items():
            definition = {"name": name, **step.model_dump(mode="json", exclude={"description"})}
            definition["needs"] = sorted(step.needs)
            if definition.get("on_truncation") == "accept":
                del definition["on_truncation"]  # the default: fingerprints from before it stay
            out[name] = hashlib.sha256(canonical_json(definition).encode()).hexdigest()
        return out

    @cached_property
    def reads_in_order(self) -> dict[str, tuple[str, ...]]:
        """step -> the steps its templates read, in pipeline order: the order `steps` holds
        them in, so a template looping over it renders the same text in every process."""
        position = {name: i for i, name in enumerate(self.order)}
        shared: dict[frozenset[str], tuple[str, ...]] = {}
        out: dict[str, tuple[str, ...]] = {}
        for name, reads in self.references.items():
            if reads not in shared:
                shared[reads] = tuple(sorted(reads, key=position.__getitem__))
            out[name] = shared[reads]
        return out

    @cached_property
    def needs(self) -> dict[str, list[str]]:
        return {name: step.needs for name, step in self.spec.steps.items()}

    @cached_property
    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.spec.steps}
        for name, step in self.spec.steps.items():
            for need in set(step.needs):
                out[need].append(name)
        return out

    def downstream(self, steps: set[str]) -> set[str]:
        """Every step that depends, directly or not, on one of `steps`."""
        return reachable(steps, self.children)

    def provider_for(self, step: str) -> ProviderConfig:
        return self.spec.providers[self.spec.steps[step].provider]

    def model_for(self, step: str) -> str:
        return self.spec.steps[step].model or self.provider_for(step).model

    def options_for(self, step: str) -> dict[str, Any]:
        """The provider's options with the step's own merged over them."""
        return {**self.provider_for(step).options, **self.spec.steps[step].options}

    def cache_identity_for(self, step: str) -> dict[str, Any]:
        return self.provider_for(step).cache_identity(self.model_for(step), self.options_for(step))

    def render_step(self, step: str, context: dict[str, Any]) -> tuple[str | None, str]:
        """The step's (system, prompt) for this context; raises TemplateProblem."""
        spec = self.spec.steps[step]
        prompt = render(spec.prompt, context, where=f"steps.{step}.prompt")
        system = render(spec.system, context, where=f"steps.{step}.system") if spec.system else None
        return system, prompt

    def key_for(self, step: str, system: str | None, prompt: str) -> tuple[dict[str, str], str]:
        """The cache key of the step for this rendered input, with its parts: the one
        computation the executor and `steplog plan` share."""
        fixed = self._fixed_key_parts.get(step)
        if fixed is None:
            fixed = self._fixed_key_parts[step] = fixed_parts(
                provider=self.cache_identity_for(step),
                step=step,
                fingerprint=self.step_fingerprints[step],
            )
        rendered = {"system": system, "prompt": prompt, "output": self.spec.steps[step].output}
        parts = parts_with(fixed, rendered=rendered)
        return parts, cache_key(parts)

    @cached_property
    def _fixed_key_parts(self) -> dict[str, tuple[str, str, str]]:
        """step -> its key's provider, step and code parts, filled in as key_for meets it."""
        return {}

    def missing_keys(self, steps: list[str], environ: Mapping[str, str]) -> list[str]:
        """Problems with API keys the given steps' providers need (named, never the key)."""
        problems = []
        for name in sorted({self.spec.steps[s].provider for s in steps}):
            config = self.spec.providers[name]
            variable = config.api_key_env
            if variable and not environ.get(variable):
                problems.append(
                    f"provider {name!r} reads its API key from {variable}, which is not set"
                )
            names = url_env_names(config.base_url)
            unset = [v for v in names if not environ.get(v)]
            for variable in unset:
                problems.append(
                    f"provider {name!r} reads part of its base_url from {variable}, "
                    "which is not set"
                )
            if names and not unset:
                problem = url_problem(config.resolved_base_url(environ) or "")
                if problem:  # the message names the variables, never their values
                    problems.append(
                        f"provider {name!r}: base_url, with {', '.join(names)} from the "
                        f"environment, {problem}"
                    )
        return problems

    def resolve_inputs(self, given: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(given) - set(self.spec.inputs))
        if unknown:
            declared = ", ".join(self.spec.inputs) or "none"
            raise PipelineError(f"unknown input {unknown[0]!r} (declared inputs: {declared})")
        resolved = {}
        for name, spec in self.spec.inputs.items():
            if name in given:
                resolved[name] = given[name]
            elif spec.default is not None:
                resolved[name] = spec.default
            else:
                raise PipelineError(f"input {name!r} is required: pass --input {name}=VALUE")
        return resolved


def _shared_sets(lists: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Each value as a frozenset, equal ones one object (a fan-out's leaves all read its root)."""
    shared: dict[frozenset[str], frozenset[str]] = {}
    out: dict[str, frozenset[str]] = {}
    for key, names in lists.items():
        found = frozenset(names)
        out[key] = shared.setdefault(found, found)
    return out


def topological_order(needs: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm, file order among ready steps; PipelineError on a cycle or unknown need."""
    for name, deps in needs.items():
        for dep in deps:
            if dep not in needs:
                raise PipelineError(f"step {name!r} needs unknown step {dep!r}")
    waiting = {name: len(set(deps)) for name, deps in needs.items()}
    children: dict[str, list[str]] = {name: [] for name in needs}
    for name, deps in needs.items():
        for dep in set(deps):
            children[dep].append(name)
    ready = deque(name for name, count in waiting.items() if count == 0)
    order: list[str] = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(needs):
        raise PipelineError(f"steps form a cycle: {' -> '.join(_find_cycle(needs, set(order)))}")
    return order


def _find_cycle(needs: dict[str, list[str]], done: set[str]) -> list[str]:
    """Walk needs from any unfinished step until a step repeats: that loop is a cycle."""
    start = next(name for name in needs if name not in done)
    path: list[str] = []
    seen: dict[str, int] = {}
    name = start
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(dep for dep in needs[name] if dep not in done)
    cycle = path[seen[name] :] + [name]
    cycle.reverse()  # read as "a -> b": a is needed by b
    return cycle


def reachable(start: set[str], edges: dict[str, list[str]] | dict[str, set[str]]) -> set[str]:
    """Every node reachable from `start` along `edges` (start excluded unless on a loop)."""
    found: set[str] = set()
    frontier = list(start)
    while frontier:
        for nxt in edges[frontier.pop()]:
            if nxt not in found:
                found.add(nxt)
                frontier.append(nxt)
    return found


def _line_of(source: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a dotted key path in TOML source."""
    if not loc:
        return None
    *tables, key = [str(p) for p in loc]
    header = None
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.strip("[] ").split(".")
            continue
        if "=" not in stripped:
            continue
        lhs = stripped.split("=", 1)[0].strip().strip('"')
        if lhs == key and (header or []) == tables[: len(header or [])]:
            return number
    for number, line in enumerate(source.splitlines(), start=1):
        if line.strip().strip("[]") == ".".join(str(p) for p in loc):
            return number
    return None


def _describe(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = error_path(loc) or "pipeline"
    line = _line_of(source, loc)
    at = f" (line {line})" if line else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {where!r}{at}"
    if kind == "missing":
        return f"missing required key {where!r}"
    if kind == "value_error":  # one of our validators: its own words, without pydantic's prefix
        return f"{where}: {err['msg'].removeprefix('Value error, ')}{at}"
    return f"{where}: {err['msg']}{at}"


def _nul_in(value: Any, where: str) -> str | None:
    """Where the first string holding a NUL character is, keys included; None if nowhere."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return where
        found = _nul_in(item, f"{where}.{key}")
        if found:
            return found
    return None


def parse_pipeline(source: str, path: str | None = None) -> Pipeline:
    label = path or "pipeline"
    try:
        raw = tomli.loads(source)  # the standard library's tomllib, compiled: about 3x faster
    except tomli.TOMLDecodeError as exc:
        raise PipelineError(f"{label}: not valid TOML: {exc}") from exc
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{label}: {_describe(exc, source)}") from exc
    if not spec.steps:
        raise PipelineError(f"{label}: the pipeline has no steps")
    # provider settings, models and options are written into cache.miss and llm.request events,
    # which the PostgreSQL store cannot hold with a NUL: refused here, before any job starts
    settings = {"providers": raw["providers"]}
    for name, step in raw["steps"].items():
        settings |= {
            f"steps.{name}.{key}": step[key] for key in ("model", "options") if key in step
        }
    nul = next(filter(None, (_nul_in(value, where) for where, value in settings.items())), None)
    if nul:
        raise PipelineError(f"{label}: {error_path((nul,))}: must not contain a NUL character")
    pipeline = Pipeline(spec=spec, source=source, path=path)
    try:
        pipeline.order  # noqa: B018 - validates the DAG
    except PipelineError as exc:
        raise PipelineError(f"{label}: {exc}") from exc
    inputs = set(spec.inputs)
    for name, step in spec.steps.items():
        if step.provider not in spec.providers:
            known = ", ".join(spec.providers) or "none"
            raise PipelineError(
                f"{label}: step {name!r} uses unknown provider {step.provider!r} (declared: {known})"
            )
        referenced: set[str] = set()
        for field_name, template in (("prompt", step.prompt), ("system", step.system)):
            if not template:
                continue
            try:
                referenced |= check_template(
                    template, where=f"steps.{name}.{field_name}", inputs=inputs
                )
            except TemplateProblem as exc:
                raise PipelineError(f"{label}: {exc}") from exc
        dynamic = EVERY_UPSTREAM in referenced
        referenced.discard(EVERY_UPSTREAM)
        # only walk the DAG when it is read whole, or a direct need does not answer
        upstream = (
            reachable({name}, pipeline.needs) if dynamic or referenced - set(step.needs) else set()
        )
        if dynamic:
            referenced |= upstream
        pipeline.references[name] = frozenset(referenced)
        if referenced - set(step.needs):
            for ref in sorted(referenced - upstream):
                if ref not in spec.steps:
                    raise PipelineError(
                        f"{label}: steps.{name}: template reads steps.{ref}, but there is no "
                        f"step named {ref!r}{did_you_mean(ref, [s for s in spec.steps if s != name])}"
                    )
                raise PipelineError(
                    f"{label}: steps.{name}: template reads steps.{ref}, which is not upstream "
                    "of this step (add it to needs)"
                )
    # steps reading the same steps share one set: 10,000 leaves of a fan-out hold one
    pipeline.references.update(_shared_sets(pipeline.references))
    for name, provider in spec.providers.items():
        if provider.kind != "offline" and not provider.base_url:
            raise PipelineError(
                f"{label}: provider {name!r} of kind {provider.kind} needs base_url"
            )
        problem = provider.base_url and url_problem(provider.base_url)
        if problem:  # found here, not when the first call is made mid-job
            raise PipelineError(f"{label}: provider {name!r}: base_url {problem}")
        credential = literal_url_credential(provider.base_url)
        if credential:  # the pipeline file is stored in the database; a secret must not be
            raise PipelineError(
                f"{label}: provider {name!r}: base_url holds {credential} written out; write "
                "it as ${ENV_VAR} (read when calling, never stored) or use api_key_env"
            )
    _check_max_tokens(pipeline, label)
    if spec.budget is not None and spec.budget.max_cost is not None:
        for name in spec.steps:  # offline models cost nothing; every other one needs a price
            model = pipeline.model_for(name)
            if pipeline.provider_for(name).kind != "offline" and model not in spec.prices:
                raise PipelineError(
                    f"{label}: step {name!r} uses model {model!r}, which has no "
                    f'[prices."{model}"] entry; [budget] max_cost needs one'
                )
    return pipeline


def _check_max_tokens(pipeline: Pipeline, label: str) -> None:
    """Anthropic refuses a request without max_tokens: say so now, not at the first call."""
    for name, step in pipeline.spec.steps.items():
        if pipeline.provider_for(name).kind != "anthropic":
            continue
        value = pipeline.options_for(name).get("max_tokens")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            where = "is missing" if value is None else f"is {value!r}, not a positive integer"
            raise PipelineError(
                f"{label}: provider {step.provider!r} (kind anthropic) needs options.max_tokens, "
                f"which {where} for step {name!r}: set it in [providers.{step.provider}] options "
                "or the step's options"
            )


def load_pipeline(path: str | Path) -> Pipeline:
    p = Path(path)
    try:
        source = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PipelineError(f"pipeline file {p} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline file {p}: {exc}") from exc
    return parse_pipeline(source, str(p))
