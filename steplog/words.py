"""How steplog words what it shows people: money, counted nouns, numbers, durations, and text
from the log made safe for a terminal. The one home of these rules, so that every verb (and
the services and providers that build its messages) says a figure the same way; it imports
nothing heavy, so any layer may use it.

- `visible(text)`: text exactly as stored, except control characters (U+0000-U+001F, U+007F,
  U+0080-U+009F), which would move the cursor, recolour the terminal or vanish, and the line
  and paragraph separators U+2028 and U+2029, which break a line for some readers and not for
  others: each is shown as Python writes it in a string (`\\t`, `\\n`, `\\r`, `\\x1b`,
  `\\x7f`, `\\x9b`, `\\u2028`). A newline is kept where the output may span lines (`keep`).
  Brackets, backslashes, `:emoji:` codes, wide and combining characters are left as they are.
- `one_line(text)`: the same with nothing kept, for what must stay one line (an error line,
  a progress line, a `key value` line of a report).
- `error_path(loc)`: where a validation error is, `steps.a.prompt`, on one line.
- `money(usd)`: `$0.000043`, `$0.41`, `$2.50`: to the micro-dollar, at least the cents, never
  scientific; an amount under a micro-dollar keeps (at most) two significant digits.
- `counted(n, noun)`: `1 job`, `2 jobs`, `0 cache hits`.
- `number(value)`: an SQL value as text; a REAL to 15 significant digits (SQLite's own
  precision, so `9.400000000000001e-05` is `0.000094` and `0.1 + 0.2` is `0.3`), never
  scientific, and with a `.0` when whole, so it still reads as a REAL.
- `seconds(s)`: a duration to the millisecond, `0.026s`.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

# what visible() escapes: C0, DEL, C1, and the two Unicode line breaks
CONTROL_CHARACTERS = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@cache
def _escapes(keep: str) -> dict[int, str]:
    kept = {ord(c) for c in keep}
    return {c: _NAMED.get(c, f"\\x{c:02x}") for c in CONTROL_CHARACTERS if c not in kept}


def visible(text: str, keep: str = "\n") -> str:
    """`text` as it is stored, with every control character not in `keep` shown escaped."""
    return text.translate(_escapes(keep))


def one_line(text: str) -> str:
    """`text` on one line: every control character, newlines too, shown escaped."""
    return text.translate(_escapes(""))


def error_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """Where a validation error is (pydantic's `loc`) as a dotted path on one line: a key
    holding a newline must not split the one-line error that names it."""
    return one_line(".".join(str(part) for part in loc))


def counted(n: int, noun: str, plural: str | None = None, *, grouped: bool = False) -> str:
    """`1 call`, `3 calls`; `plural` for a noun that does not just take an s; `grouped`:
    digits in thousands (`12,345 steps`)."""
    word = noun if n == 1 else (plural if plural is not None else noun + "s")
    return f"{n:,} {word}" if grouped else f"{n} {word}"


_MICRO = Decimal("0.000001")


def money(usd: float) -> str:
    """US dollars as spent: to the micro-dollar with at least the cents (`$0.41`, `$0.000043`,
    `$2.50`, `$0.00`); under a micro-dollar, at most two significant digits (`$0.0000000031`)."""
    exact = Decimal(repr(float(usd)))
    if not exact.is_finite():
        return f"${usd}"
    sign, exact = ("-", -exact) if exact < 0 else ("", exact)
    shown = exact.quantize(_MICRO, rounding=ROUND_HALF_EVEN)
    if shown == 0 and exact != 0:  # two significant digits of a tiny amount
        shown = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 1), rounding=ROUND_HALF_EVEN)
    whole, _, cents = format(shown, "f").partition(".")
    return f"{sign}${whole}.{cents.rstrip('0').ljust(2, '0')}"


def number(value: Any) -> str:
    """An SQL value (INTEGER or REAL) as text: integers as they are, a REAL to 15 significant
    digits, positional (no exponent), with `.0` when whole."""
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    text = format(Decimal(f"{value:.15g}"), "f")
    return text if "." in text else text + ".0"


def seconds(duration_s: float | None, missing: str = "") -> str:
    """A duration to the millisecond (`0.026s`); `missing` when there is none."""
    return missing if duration_s is None else f"{duration_s:.3f}s"
