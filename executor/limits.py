"""Size limits for what a template may build, as pure checks the sandbox calls.

A template runs on the user's machine with text from the user and from LLM answers. Without
limits one short line (`{{ 'a' * 10**10 }}`, `{{ 'x'|center(10**9) }}`, `{{ 9**(9**9) }}`)
exhausts memory or CPU before any event is written. Each check below looks at the operands
*before* the operation runs and raises jinja's SecurityError (the sandbox's refusal) when the
result would pass a limit; executor.templates reports it as a TemplateProblem.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from jinja2 import Environment
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context

MAX_RENDERED_CHARS = 16 * 1024 * 1024  # a rendered prompt, and any text or list a template builds
MAX_INT_BITS = 64 * 1024  # an integer a template computes (about 20,000 decimal digits)

_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_JINJA_STATE = (Environment, Context, EvalContext)  # what pass_context & co. put first
# a width or precision in a printf (`%10.3f`) or str.format (`{:>10}`) specification
_PRINTF_NUMBERS = re.compile(r"%[#0\- +]*(\d*)(?:\.(\d*))?")
_FORMAT_SPEC_NUMBERS = re.compile(r"\{[^{}]*?:([^{}]*)\}")


def size_of(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(what: str) -> None:
    raise SecurityError(what)


def _check_size(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        _refuse(f"{what} would build {size} characters or items (limit {MAX_RENDERED_CHARS})")


def _check_widths(args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str) -> None:
    """Numbers that set a size (a width, a count): none may pass the text limit."""
    for value in (*args, *kwargs.values()):
        if _is_int(value) and abs(value) > MAX_RENDERED_CHARS:
            _refuse(f"{what} was given the width {value} (limit {MAX_RENDERED_CHARS} characters)")


def _check_format_text(fmt: str, what: str) -> None:
    numbers = [n for m in _PRINTF_NUMBERS.finditer(fmt) for n in m.groups() if n]
    for spec in _FORMAT_SPEC_NUMBERS.findall(fmt):
        numbers += re.findall(r"\d+", spec)
    for digits in numbers:
        if len(digits) > 9 or int(digits) > MAX_RENDERED_CHARS:
            _refuse(
                f"{what} asks for a field {digits} characters wide (limit {MAX_RENDERED_CHARS})"
            )


def materialized(value: Any) -> Any:
    """An iterator (a generator, a `map` result) as a list, so its size can be checked; any
    other value as it is. Used on what join() is given."""
    if isinstance(value, Iterator):
        return list(value)
    return value


def _check_join(items: Any, sep: Any, what: str) -> None:
    if not isinstance(items, _SIZED):
        return
    count = len(items)
    if isinstance(items, (str, bytes)):
        sizes = count
    else:
        sizes = sum(size_of(i) or len(str(i)) for i in items)
    _check_size(sizes + len(str(sep)) * count, what)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """`*`, `**`, `+` and `%` between template values."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if _is_int(count) and isinstance(seq, _SIZED):
                _check_size(size_of(seq) * max(count, 0), "`*`")
        if _is_int(left) and _is_int(right):
            if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                _refuse(f"`*` of integers would pass {MAX_INT_BITS} bits")
    elif operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if abs(left).bit_length() * right > MAX_INT_BITS:
                _refuse(f"`**` would build an integer of more than {MAX_INT_BITS} bits")
    elif operator == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            _check_size(size_of(left) + size_of(right), "`+`")
    elif operator == "%" and isinstance(left, str):
        _check_format_text(left, "`%`")
        if "*" in left:  # `%*d`: the width comes from the arguments
            _check_widths(right if isinstance(right, tuple) else (right,), {}, "`%`")


def _check_text_method(
    name: str, text: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        count = text.count(args[0]) if args[0] else len(text) + 1
        _check_size(len(text) + count * len(args[1]), "replace")
    elif name == "join" and args:
        _check_join(args[0], text, "join")
    elif name == "expandtabs":
        width = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(width):
            _check_size(len(text) + text.count("\t") * max(width, 0), "expandtabs")
    elif name in ("format", "format_map"):
        _check_format_text(text, name)


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def check_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """A call in a template, e.g. `'x'.center(n)`, `', '.join(list)`, `'{}'.format(v)`."""
    name = getattr(func, "__name__", "a call")
    owner = getattr(func, "__self__", None)
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            _check_widths(args, kwargs, name)
        _check_text_method(name, owner, args, kwargs)


def check_filter(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """A filter call: the environment/context first for filters that take it, then the value
    filtered (any number: `{{ 10**12|filesizeformat }}`), then the filter's own arguments."""
    values = [i for i, a in enumerate(args) if not isinstance(a, _JINJA_STATE)]
    own = args[values[0] + 1 :] if values else ()
    _check_widths(own, kwargs, f"filter {name}")
    texts = [a for a in args if isinstance(a, str)]
    if name == "indent" and texts:
        width = kwargs.get("width", next((a for a in args if _is_int(a)), 4))
        lines = texts[0].count("\n") + 1
        step = width if _is_int(width) else len(width) if isinstance(width, str) else 4
        _check_size(len(texts[0]) + lines * max(step, 0), "filter indent")
    elif name == "replace" and len(texts) >= 3:
        _check_text_method("replace", texts[0], (texts[1], texts[2]), {})
    elif name == "join":
        sized = [a for a in args if isinstance(a, _SIZED)]
        if sized:
            sep = kwargs.get("d", sized[1] if len(sized) > 1 else "")
            _check_join(sized[0], sep, "filter join")
    elif name == "format" and texts:
        _check_format_text(texts[0], "filter format")
