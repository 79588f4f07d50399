"""Figures are shown with the precision they have, counted nouns agree with their number, and
the quick start's `sql "SELECT * FROM job_summary"` reads in an 80-column terminal.

The rules live in steplog/words.py (money, counted, number, seconds); here they are checked on
their own and through real jobs: priced calls to a fake OpenAI-compatible server on 127.0.0.1
(a call of 43 words at $1 per million input tokens costs $0.000043; two of 3 and 91 words add
up to the float 9.400000000000001e-05), and the example pipeline run offline.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len

from steplog.words import counted, money, number, one_line, seconds, visible
from tests.cli_inprocess import Outcome, steplog_here
from tests.on_disk import EXAMPLE

# -- the rules on their own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (0.0, "$0.00"),
        (0.000043, "$0.000043"),
        (9.400000000000001e-05, "$0.000094"),
        (0.41, "$0.41"),
        (2.5, "$2.50"),
        (6.0, "$6.00"),
        (2.123456, "$2.123456"),
        (0.0123456789, "$0.012346"),
        (3.1e-09, "$0.0000000031"),
        (4.321e-07, "$0.00000043"),
        (1e-12, "$0.000000000001"),
        (1234.5, "$1234.50"),
        (-0.5, "-$0.50"),
    ],
)
def test_money_keeps_the_digits_that_were_spent(usd, shown):
    assert money(usd) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (9.400000000000001e-05, "0.000094"),
        (0.1 + 0.2, "0.3"),
        (3.0, "3.0"),
        (0.026031, "0.026031"),
        (1e20, "100000000000000000000.0"),
        (1e-20, "0.00000000000000000001"),
        (-2.5, "-2.5"),
        (7, "7"),
        (-(2**63), "-9223372036854775808"),
        (math.inf, "inf"),
    ],
)
def test_a_number_is_never_scientific(value, shown):
    assert number(value) == shown


@settings(max_examples=200)
@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_money_is_exact_to_the_micro_dollar_and_never_scientific(usd):
    text = money(usd)
    assert text.startswith("$") and "e" not in text.lower()
    whole, cents = text[1:].split(".")
    assert len(cents) >= 2
    shown = Decimal(text[1:])
    exact = Decimal(repr(usd))
    if exact >= Decimal("0.0000005"):  # to the micro-dollar
        assert abs(shown - exact) <= Decimal("0.0000005")
        assert len(cents) <= 6
    elif exact:  # two significant digits of a tiny amount
        assert abs(shown - exact) <= exact * Decimal("0.05")


@settings(max_examples=200)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_number_is_what_sqlite_shows_in_positional_digits(value):
    text = number(value)
    assert "e" not in text.lower() and "." in text
    assert float(text) == float(f"{value:.15g}")  # SQLite's own 15 significant digits


def test_counted_nouns_agree_with_their_number():
    assert counted(1, "job") == "1 job" and counted(2, "job") == "2 jobs"
    assert counted(0, "cache hit") == "0 cache hits" and counted(1, "cache hit") == "1 cache hit"
    assert counted(1, "miss", "misses") == "1 miss" and counted(3, "miss", "misses") == "3 misses"
    assert counted(12345, "step", grouped=True) == "12,345 steps"
    assert seconds(0.0259) == "0.026s" and seconds(None, "-") == "-"


def test_visible_escapes_only_control_characters():
    text = "[bold]x[/] :smile: \\n 界 e\u0301 \x1b[31m\x07\t\r\n\x7f\x9b\u2028"
    assert (
        visible(text) == "[bold]x[/] :smile: \\n 界 e\u0301 \\x1b[31m\\x07\\t\\r\n\\x7f\\x9b\\u2028"
    )
    assert one_line("a\nb") == "a\\nb" and visible("a\tb", keep="\n\t") == "a\tb"


# -- through real jobs ----------------------------------------------------------------------

PRICED = """\
name = "priced"

[providers.remote]
kind = "openai"
base_url = "{url}"
model = "fake-model"
api_key_env = "OPENAI_API_KEY"
max_retries = 0

[prices."fake-model"]
input_per_mtok = 1.0
output_per_mtok = 0.0
{steps}"""

STEP = """
[steps.{name}]
provider = "remote"
prompt = "{prompt}"
"""


def words(n: int, salt: str) -> str:
    return " ".join(f"{salt}{i}" for i in range(n))


def ok(result: Outcome) -> str:
    assert result.code == 0, result.err
    return result.out


@pytest.fixture(scope="module")
def priced(tmp_path_factory, module_fake_llm_factory) -> Path:
    """One database: job `one` (one call of 43 input tokens: $0.000043), `two` (calls of 3 and
    91 tokens: $0.000003 + $0.000091, which as floats add up to 9.400000000000001e-05), and
    `again` (job one's pipeline once more: a cache hit)."""
    server = module_fake_llm_factory()
    root = tmp_path_factory.mktemp("priced")
    db = root / "priced.db"
    one = root / "one.toml"
    one.write_text(
        PRICED.format(url=server.url, steps=STEP.format(name="a", prompt=words(43, "w"))),
        encoding="utf-8",
    )
    two = root / "two.toml"
    steps = STEP.format(name="a", prompt=words(3, "x")) + STEP.format(
        name="b", prompt=words(91, "y")
    )
    two.write_text(PRICED.format(url=server.url, steps=steps), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-numbers")
        for job, path in (("one", one), ("two", two), ("again", one)):
            result = steplog_here(db, "run", str(path), "--job-id", job, "-q", cwd=root)
            assert result.code == 0, result.err
            (root / f"{job}.closing").write_text(result.out, encoding="utf-8")
    return db


def test_a_job_of_43_micro_dollars_shows_them_everywhere(priced):
    closing = (priced.parent / "one.closing").read_text(encoding="utf-8")
    assert (
        "1 step, 0 cache hits, calls 1: 1 answered, 0 failed, 0 unanswered, " in closing
        and "$0.000043;" in closing
    )
    assert "cost $0.000043" in ok(steplog_here(priced, "status", "one"))
    assert "│ $0.000043 │" in ok(steplog_here(priced, "status", "one"))  # the step's cost
    audit = ok(steplog_here(priced, "audit", "one"))
    assert "cost $0.000043" in audit and "│ $0.000043 │" in audit
    assert "cost $0.000043" in ok(steplog_here(priced, "show", "one", "a"))
    sql = ok(steplog_here(priced, "sql", "SELECT cost FROM job_summary WHERE job_id = 'one'"))
    assert "│ 0.000043 │" in sql and "1 row\n" in sql and "e-05" not in sql


def test_a_sum_of_costs_is_not_shown_as_float_noise(priced):
    doc = json.loads(ok(steplog_here(priced, "status", "two", "--json")))
    assert doc["cost"] == pytest.approx(0.000094)  # --json: the float as summed
    status = ok(steplog_here(priced, "status", "two"))
    assert "cost $0.000094" in status and "$0.000003" in status and "$0.000091" in status
    rows = json.loads(
        ok(
            steplog_here(
                priced, "sql", "SELECT cost FROM job_summary WHERE job_id = 'two'", "--json"
            )
        )
    )
    assert rows == [{"cost": 9.400000000000001e-05}]  # SQLite's sum, as it is
    sql = ok(steplog_here(priced, "sql", "SELECT cost FROM job_summary WHERE job_id = 'two'"))
    assert "│ 0.000094 │" in sql and "e-05" not in sql
    assert "$0.000094" in ok(steplog_here(priced, "audit", "two"))


def test_one_of_anything_is_singular(priced, tmp_path, module_fake_llm_factory):
    again = (priced.parent / "again.closing").read_text(encoding="utf-8")
    assert "1 step, 1 cache hit, calls 0: 0 answered, 0 failed, 0 unanswered, " in again
    assert "cache: 0 hits, 1 miss, 0 tokens saved" in ok(steplog_here(priced, "audit", "one"))
    assert "cache: 1 hit, 0 misses, " in ok(steplog_here(priced, "audit", "again"))
    assert ok(steplog_here(priced, "sql", "SELECT 1 AS one")).endswith("\n1 row\n")
    assert ok(steplog_here(priced, "sql", "SELECT 1 WHERE 0")).endswith("\n0 rows\n")
    out = priced.parent / "one.svg"
    assert "(1 bar, 1 step)" in ok(steplog_here(priced, "timeline", "one", "-o", str(out)))
    forked = steplog_here(
        priced, "replay", "one", "--until", "1", "--fork", "f1", "--workspace", str(tmp_path / "f")
    )
    assert "1 event copied, 0 files restored" in ok(forked)

    lone = tmp_path / "lone.db"
    ok(steplog_here(lone, "run", str(EXAMPLE), "--job-id", "solo", "-q", cwd=tmp_path))
    assert ok(steplog_here(lone, "verify")).startswith("ok: 28 events in 1 job,")

    server = module_fake_llm_factory()  # it lists one model, fake-model
    check = tmp_path / "check.toml"
    check.write_text(
        PRICED.format(url=server.url, steps=STEP.format(name="a", prompt="hi")), encoding="utf-8"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-numbers")
        checked = json.loads(ok(steplog_here(lone, "providers", "check", str(check), "--json")))
    assert checked[0]["detail"] == "1 model; fake-model listed"


# -- 80 columns -----------------------------------------------------------------------------


@pytest.fixture
def example_db(tmp_path) -> Path:
    db = tmp_path / "demo.db"
    ok(steplog_here(db, "run", str(EXAMPLE), "--job-id", "demo", "-q", cwd=tmp_path))
    return db


def lines_fit(out: str, width: int = 80) -> list[str]:
    lines = out.split("\n")
    assert all(cell_len(ln) <= width for ln in lines), max(lines, key=cell_len)
    return lines


def test_the_quick_starts_job_summary_reads_at_80_columns(example_db, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = ok(steplog_here(example_db, "sql", "SELECT * FROM job_summary"))
    lines = lines_fit(out)
    (row,) = json.loads(ok(steplog_here(example_db, "sql", "SELECT * FROM job_summary", "--json")))
    assert lines[0].startswith("-[ row 1 ]") and lines[-2:] == ["1 row", ""]
    # one record: each column's name, then its value, on a line of its own
    for name, value in row.items():
        shown = "" if value is None else number(value) if not isinstance(value, str) else value
        assert any(ln.split() == [name, *shown.split()] for ln in lines), (name, shown, out)
    assert len(lines) == 1 + len(row) + 2


def test_a_result_that_fits_stays_a_table_and_long_values_wrap_inside_80_columns(
    example_db, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    out = ok(
        steplog_here(
            example_db,
            "sql",
            "SELECT c.step, c.attempt, (SELECT content FROM blobs WHERE sha256 = c.response_sha256)"
            " AS answer FROM llm_calls AS c WHERE c.step = 'architect'",
        )
    )
    lines = lines_fit(out)
    assert lines[0].startswith("┏") and "┃ step " in lines[1] and "answer" in lines[1]
    assert "bytes>" not in out
    assert any("# Design notes (architect)" in ln for ln in lines)  # a text blob, as text
    answer = json.loads(
        ok(
            steplog_here(
                example_db,
                "sql",
                "SELECT content FROM blobs WHERE sha256 = (SELECT response_sha256 FROM llm_calls"
                " WHERE step = 'architect')",
                "--json",
            )
        )
    )[0]["content"]
    body = "".join(ln.split("│")[3].strip() for ln in lines if ln.startswith("│"))
    assert body.replace(" ", "") == answer.replace("\n", "").replace(" ", "")


def test_a_binary_blob_stays_a_count_of_bytes(example_db):
    out = ok(
        steplog_here(example_db, "sql", "SELECT x'ff00fe' AS b, x'' AS e, CAST('é' AS BLOB) AS t")
    )
    assert "│ <3 bytes> │" in out and "│ é " in out
