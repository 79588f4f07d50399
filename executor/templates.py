"""Prompt templates: jinja2 in a sandbox, strict about every name a template uses.

A template may read `inputs.<declared input>` and `steps.<upstream step>.output` (or `.files`
for a files step). Anything else is refused when the pipeline loads, not half-way through a run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

STEP_FIELDS = ("output", "files")


class TemplateProblem(ValueError):
    """A template that cannot be loaded or rendered; the message names what is wrong."""


def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


ENV = _environment()


def static_key(node: nodes.Node) -> str | None:
    """The attribute or constant key a Getattr/Getitem node reads, if static."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def check_template(source: str, *, where: str, inputs: set[str]) -> set[str]:
    """Refuse a template naming an unknown variable or input (or with bad syntax).

    Returns the step names it reads, for the caller to check they are upstream.
    """
    plan = simple_plan(source)
    if plan is not None:
        return _check_simple(plan, where=where, inputs=inputs)
    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            f"{where}: template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for name in tree.find_all(nodes.Name):
        if (
            name.ctx == "load"
            and name.name not in ("inputs", "steps")
            and name.name not in assigned
        ):
            raise TemplateProblem(
                f"{where}: template names unknown variable {name.name!r} "
                "(use inputs.<name> or steps.<step>.output)"
            )
    referenced: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if not isinstance(base, nodes.Name) or base.name in assigned:
            continue
        key = static_key(node)
        if key is None:
            continue
        if base.name == "inputs" and key not in inputs:
            raise TemplateProblem(f"{where}: template names unknown input {key!r}")
        if base.name == "steps":
            referenced.add(key)
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner = node.node
        if (
            isinstance(inner, (nodes.Getattr, nodes.Getitem))
            and isinstance(inner.node, nodes.Name)
            and inner.node.name == "steps"
            and inner.node.name not in assigned
        ):
            field = static_key(node)
            if field is not None and field not in STEP_FIELDS:
                raise TemplateProblem(
                    f"{where}: steps.{static_key(inner)}.{field} is not a step field "
                    f"(one of: {', '.join(STEP_FIELDS)})"
                )
    return referenced


# The common template is text with `{{ a.b.c }}` holes. Compiling it with jinja costs ~1 ms,
# which would dominate a step's overhead, so such templates are split by a regex and rendered
# by dict lookups; anything else (filters, statements, comments, whitespace control) goes to
# jinja. tests/test_templates.py checks both paths give the same text.
_SIMPLE_HOLE = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*) *\}\}")
_JINJA_MARKS = ("{{", "{%", "{#", "\r")

Piece = str | tuple[str, ...]


@lru_cache(maxsize=4096)
def simple_plan(source: str) -> tuple[Piece, ...] | None:
    """Literal text and name paths, or None when the template needs jinja."""
    pieces: list[Piece] = []
    pos = 0
    for match in _SIMPLE_HOLE.finditer(source):
        pieces.append(source[pos : match.start()])
        pieces.append(tuple(match.group(1).split(".")))
        pos = match.end()
    pieces.append(source[pos:])
    if any(isinstance(p, str) and any(mark in p for mark in _JINJA_MARKS) for p in pieces):
        return None
    return tuple(p for p in pieces if p != "")


def _render_simple(plan: tuple[Piece, ...], context: dict[str, Any]) -> str | None:
    out: list[str] = []
    for piece in plan:
        if isinstance(piece, str):
            out.append(piece)
            continue
        value: Any = context
        for name in piece:
            if not isinstance(value, dict) or name not in value:
                return None  # let jinja produce its exact error (or attribute lookup)
            value = value[name]
        out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Template:
    return ENV.from_string(source)


def _check_simple(plan: tuple[Piece, ...], *, where: str, inputs: set[str]) -> set[str]:
    referenced: set[str] = set()
    for piece in plan:
        if isinstance(piece, str):
            continue
        root, *rest = piece
        if root not in ("inputs", "steps"):
            raise TemplateProblem(
                f"{where}: template names unknown variable {root!r} "
                "(use inputs.<name> or steps.<step>.output)"
            )
        if root == "inputs" and rest and rest[0] not in inputs:
            raise TemplateProblem(f"{where}: template names unknown input {rest[0]!r}")
        if root == "steps" and rest:
            referenced.add(rest[0])
            if len(rest) > 1 and rest[1] not in STEP_FIELDS:
                raise TemplateProblem(
                    f"{where}: steps.{rest[0]}.{rest[1]} is not a step field "
                    f"(one of: {', '.join(STEP_FIELDS)})"
                )
    return referenced


def render(source: str, context: dict[str, Any], *, where: str) -> str:
    plan = simple_plan(source)
    if plan is not None:
        text = _render_simple(plan, context)
        if text is not None:
            return text
    try:
        return _compiled(source).render(context)
    except UndefinedError as exc:
        raise TemplateProblem(f"{where}: {exc.message}") from exc
    except SecurityError as exc:
        raise TemplateProblem(f"{where}: refused by the template sandbox: {exc}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"{where}: template syntax error: {exc.message}") from exc
    except Exception as exc:  # the template's own arithmetic or calls, e.g. {{ 10 // 0 }}
        raise TemplateProblem(f"{where}: {type(exc).__name__}: {exc}") from exc
