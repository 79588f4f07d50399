"""Prompt templates: jinja2 in a sandbox, strict about every name a template uses.

A template may read `inputs.<declared input>` and `steps.<upstream step>.output` (or `.files`
for a files step). Anything else is refused when the pipeline loads, not half-way through a run.
"""

from __future__ import annotations

import functools
import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from steplog.executor.limits import (
    MAX_RENDERED_CHARS,
    check_binop,
    check_call,
    check_filter,
    materialized,
)

STEP_FIELDS = ("output", "files")
# In the names check_template returns: the template reads `steps` in a way not known statically
# ({% for s in steps %}, steps[name], steps.items(), or it assigns the name), so it reads every
# step upstream of its own.
# Not a valid step name, so it cannot collide with one.
EVERY_UPSTREAM = "*"


class TemplateProblem(ValueError):
    """A template that cannot be loaded or rendered; the message names what is wrong."""


class _BoundedCodeGenerator(CodeGenerator):
    """`a ~ b` compiles to a join jinja cannot intercept: route it through the environment."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, plus size limits (executor.limits): no operator, method, filter or
    concatenation may build a text or list longer than MAX_RENDERED_CHARS, nor a power an
    integer of more than a few thousand bits, so `{{ 'a' * 10**10 }}` is refused, not run."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if getattr(__obj, "__name__", None) == "join":
            args = tuple(materialized(a) for a in args)
        check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(p) for p in parts]
        total = sum(map(len, texts))
        if total > MAX_RENDERED_CHARS:
            raise SecurityError(f"`~` would build {total} characters (limit {MAX_RENDERED_CHARS})")
        return "".join(texts)


def _bounded_filter(name: str, func: Any) -> Any:
    # wraps() copies jinja's pass_context / pass_environment mark (an attribute of func)
    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if name == "join":
            args = tuple(materialized(a) for a in args)
        check_filter(name, args, kwargs)
        return func(*args, **kwargs)

    return bounded


def _environment() -> ImmutableSandboxedEnvironment:
    return BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


ENV = _environment()


def static_key(node: nodes.Node) -> str | None:
    """The attribute or constant key a Getattr/Getitem node reads, if static."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


# Sized past the largest pipelines measured (10,000 steps): a smaller cache, walked in file
# order, misses on every template and parses each one again for each reader.
TREE_CACHE = 16384


@lru_cache(maxsize=TREE_CACHE)
def syntax_tree(source: str) -> nodes.Template:
    """The template parsed once, for the checks here and the explanations (executor/explain.py)
    to read. Only read: compiling it would let jinja's optimizer fold constants in place, so
    _compiled parses its own copy."""
    return ENV.parse(source)


def check_template(source: str, *, where: str, inputs: set[str]) -> set[str]:
    """Refuse a template naming an unknown variable or input (or with bad syntax).

    Returns the step names it reads, for the caller to check they are upstream, with
    EVERY_UPSTREAM among them when it reads `steps` in a way not known statically.
    """
    plan = simple_plan(source)
    if plan is not None:
        return _check_simple(plan, where=where, inputs=inputs)
    try:
        tree = syntax_tree(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            f"{where}: template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    except RecursionError as exc:  # jinja's parser recurses once per nesting level
        raise TemplateProblem(f"{where}: template nests too deeply to parse") from exc
    found = list(tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)))  # one walk
    names = [n for n in found if isinstance(n, nodes.Name)]
    lookups = [n for n in found if not isinstance(n, nodes.Name)]
    assigned = {n.name for n in names if n.ctx in ("store", "param")}
    for name in names:
        if (
            name.ctx == "load"
            and name.name not in ("inputs", "steps")
            and name.name not in assigned
        ):
            raise TemplateProblem(
                f"{where}: template names unknown variable {name.name!r} "
                "(use inputs.<name> or steps.<step>.output)"
            )
    for node in lookups:
        key = static_key(node)
        if key is not None and key.startswith("_"):
            raise TemplateProblem(
                f"{where}: template reads {key!r}; names starting with _ are refused by the "
                "template sandbox"
            )
    referenced: set[str] = set()
    static_bases: set[int] = set()  # the `steps` names read as steps.X or steps["X"]
    for node in lookups:
        base = node.node
        if not isinstance(base, nodes.Name) or base.name in assigned:
            continue
        key = static_key(node)
        if key is None:
            continue
        if base.name == "inputs" and key not in inputs:
            raise TemplateProblem(f"{where}: template names unknown input {key!r}")
        if base.name == "steps" and not (isinstance(node, nodes.Getattr) and hasattr(dict, key)):
            referenced.add(key)
            static_bases.add(id(base))
    if "steps" in assigned or any(
        n.name == "steps" and n.ctx == "load" and id(n) not in static_bases for n in names
    ):  # (a template assigning `steps` may read it before or after: which, not told here)
        referenced.add(EVERY_UPSTREAM)
    for node in lookups:
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


@lru_cache(maxsize=TREE_CACHE)
def simple_plan(source: str) -> tuple[Piece, ...] | None:
    """Literal text and name paths, or None when the template needs jinja."""
    pieces: list[Piece] = []
    pos = 0
    for match in _SIMPLE_HOLE.finditer(source):
        pieces.append(source[pos : match.start()])
        pieces.append(_path(match.group(1)))
        pos = match.end()
    pieces.append(source[pos:])
    if any(isinstance(p, str) and any(mark in p for mark in _JINJA_MARKS) for p in pieces):
        return None
    return tuple(p for p in pieces if p != "")


@lru_cache(maxsize=TREE_CACHE)
def _path(dotted: str) -> tuple[str, ...]:
    """One tuple per distinct hole: thousands of steps reading steps.root.output share it."""
    return tuple(dotted.split("."))


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
    _check_rendered(sum(map(len, out)), "the rendered text")
    return "".join(out)


def _check_rendered(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} exceeds {MAX_RENDERED_CHARS} characters")


def _render_bounded(template: Template, context: dict[str, Any]) -> str:
    """Render chunk by chunk, stopping as soon as the text passes the limit (a loop that
    writes a little many times never holds more than the limit)."""
    chunks: list[str] = []
    total = 0
    for chunk in template.generate(context):
        total += len(chunk)
        _check_rendered(total, "the rendered text")
        chunks.append(chunk)
    return "".join(chunks)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Template:
    return ENV.from_string(source)


def _check_simple(plan: tuple[Piece, ...], *, where: str, inputs: set[str]) -> set[str]:
    referenced: set[str] = set()
    for piece in plan:
        if isinstance(piece, str):
            continue
        root, *rest = piece
        private = next((name for name in rest if name.startswith("_")), None)
        if private is not None:
            raise TemplateProblem(
                f"{where}: template reads {private!r}; names starting with _ are refused by the "
                "template sandbox"
            )
        if root not in ("inputs", "steps"):
            raise TemplateProblem(
                f"{where}: template names unknown variable {root!r} "
                "(use inputs.<name> or steps.<step>.output)"
            )
        if root == "inputs" and rest and rest[0] not in inputs:
            raise TemplateProblem(f"{where}: template names unknown input {rest[0]!r}")
        if root == "steps" and not rest:
            referenced.add(EVERY_UPSTREAM)  # {{ steps }} prints them all
        elif root == "steps":
            referenced.add(rest[0])
            if len(rest) > 1 and rest[1] not in STEP_FIELDS:
                raise TemplateProblem(
                    f"{where}: steps.{rest[0]}.{rest[1]} is not a step field "
                    f"(one of: {', '.join(STEP_FIELDS)})"
                )
    return referenced


def render(source: str, context: dict[str, Any], *, where: str) -> str:
    plan = simple_plan(source)
    try:
        if plan is not None:
            text = _render_simple(plan, context)
            if text is not None:
                return text
        return _render_bounded(_compiled(source), context)
    except UndefinedError as exc:
        raise TemplateProblem(f"{where}: {exc.message}") from exc
    except SecurityError as exc:
        raise TemplateProblem(f"{where}: refused by the template sandbox: {exc}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"{where}: template syntax error: {exc.message}") from exc
    except Exception as exc:  # the template's own arithmetic or calls, e.g. {{ 10 // 0 }}
        raise TemplateProblem(f"{where}: {type(exc).__name__}: {exc}") from exc
