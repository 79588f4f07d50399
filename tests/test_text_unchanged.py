"""Text from the log, a pipeline or a server is shown as it is, by every verb.

Arbitrary text (rich markup, `[redacted]`, backslash escapes, `[/]`, `:emoji:` codes, control
characters, wide CJK and combining characters) is put into real events — a pipeline's name,
its provider's model, an input, the rendered prompt and the offline provider's answer of a real
run; the error text a fake LLM server on 127.0.0.1 answers with — then read back from the log
and looked for in what each verb prints.

The rule (README, "Text as it is"): a table or a terminal line shows the text character for
character, except control characters, which are shown escaped (`words.visible`): a newline is
kept inside a table cell and a `show` block (tab too, in a block), and escaped in a one-line
field (`words.one_line`). `--json`, `--csv` and `show --PART` give the text exactly.

Everything runs in this process (tests.cli_inprocess); COLUMNS is wide so no cell wraps.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steplog.words import CONTROL_CHARACTERS, one_line, visible
from tests.cli_inprocess import Outcome
from tests.cli_inprocess import steplog_here as _steplog_here

# -- the text -------------------------------------------------------------------------------

FRAGMENTS = [
    "[bold]bad[/bold]",
    "[/]",
    "[redacted]",
    "[steps.a]",
    "[link=file:///etc/passwd]x[/link]",
    ":smile:",
    ":thumbs_up:",
    "\\",
    "\\n",
    "\\x1b",
    "\\[bold]",
    "\x1b[31m",
    "\x1b]0;title\x07",
    "\x1b[2J",
    "\r",
    "\t",
    "\n",
    "\x00",
    "\x7f",
    "\x9b",
    "\x85",
    "界面",
    "ｗｉｄｅ",
    "e\u0301",
    "\u200d",
    "\u202e",
    "\u2028",
    "\ufeff",
    "\U0001f600",
    "[",
    "]",
    "  ",
    "http://127.0.0.1/x",
    "'quoted' \"double\"",
    "{{ not a template }}",
    "1.5e-05",
]

# anything that is text (no lone surrogates), with the hostile fragments mixed in
TEXT = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),
    ),
    min_size=1,
    max_size=6,
).map("".join)
# what a command line can carry: no NUL
ARGUMENT = TEXT.map(lambda t: t.replace("\x00", "")).filter(lambda t: t != "")
# what an error message a server sends is used as: something not blank
MESSAGE = ARGUMENT.filter(lambda t: t.strip() != "")

RAW_CONTROLS = frozenset(chr(c) for c in CONTROL_CHARACTERS)


def toml_string(text: str) -> str:
    """A TOML basic string holding `text` exactly."""
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# -- what must hold of a verb's output ------------------------------------------------------


def terminal(result: Outcome, *, code: int = 0, kept: str = "\n") -> str:
    """The output of a verb for a person: its exit code as expected, and no control character
    but those `kept` in it (nothing that moves the cursor or recolours the terminal)."""
    assert result.code == code, (result.code, result.err[-2000:])
    for stream in (result.out, result.err):
        raw = RAW_CONTROLS.intersection(stream) - set(kept)
        assert not raw, (sorted(map(ascii, raw)), stream[-2000:])
    return result.out


def in_line(text: str, out: str) -> None:
    """`text` is in `out` on one line, as one_line shows it."""
    assert one_line(text) in out, (one_line(text), out[-3000:])


def in_cell(text: str, out: str) -> None:
    """`text` is in a table cell of `out`: each of its lines, as visible shows it, on a line."""
    lines = out.split("\n")
    for piece in visible(text).split("\n"):
        assert any(piece in ln for ln in lines), (piece, out[-3000:])


def in_block(text: str, out: str) -> None:
    """`text` is a block of `out` (show's prompt, answer): whole, newlines and tabs kept."""
    assert visible(text, keep="\n\t") in out, (visible(text, keep="\n\t"), out[-3000:])


# -- the log --------------------------------------------------------------------------------


def read_log(db: Path, job: str) -> dict:
    conn = sqlite3.connect(db)
    try:
        events = conn.execute(
            "SELECT type, step, data FROM events WHERE job_id = ? ORDER BY version", (job,)
        ).fetchall()

        def blob(sha: str) -> str:
            return (
                conn.execute("SELECT content FROM blobs WHERE sha256 = ?", (sha,))
                .fetchone()[0]
                .decode("utf-8")
            )

        first = {}
        for type_, _, data in events:
            first.setdefault(type_, json.loads(data))
        log = {"events": events, "first": first}
        if "llm.request" in first:  # the request blob: model, options, system and prompt
            log["request"] = blob(first["llm.request"]["prompt_sha256"])
            log["prompt"] = json.loads(log["request"])["prompt"]
            log["prompt_sha256"] = first["llm.request"]["prompt_sha256"]
        response = first.get("llm.response") or {}
        if response.get("response_sha256"):
            log["answer"] = blob(response["response_sha256"])
        return log
    finally:
        conn.close()


def events_shown(log: dict, out: str, prefix: str = "") -> None:
    """The data of every event (whose type starts with prefix) as the log holds it, in the
    events table."""
    for type_, _, data in log["events"]:
        if type_.startswith(prefix):
            in_cell(data, out)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def wide_terminal() -> Iterator[None]:
    """Wide enough that no cell wraps (the 80-column layout is tests/test_numbers_shown.py's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "5000")
        mp.setenv("OPENAI_API_KEY", "sk-text-unchanged")
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text")


_numbers = itertools.count(1)


def steplog_here(db: Path, *args: str) -> Outcome:
    """The CLI in this process, run in the module's directory (a job's workspace goes there)."""
    return _steplog_here(db, *args, cwd=db.parent)


def next_job() -> str:
    return f"t{next(_numbers)}"


OFFLINE = """\
name = {name}

[inputs.t]

[providers.local]
kind = "offline"
model = {model}
options = {{ run = "{job}" }}  # a key of its own: the cache never serves another example

[steps.a]
provider = "local"
prompt = "{{{{ inputs.t }}}}"
"""

SERVER = """\
name = "errors"

[providers.remote]
kind = "openai"
base_url = "{url}"
model = "fake-model"
api_key_env = "OPENAI_API_KEY"
max_retries = 0

[steps.a]
provider = "remote"
prompt = "go"
"""


# -- the properties -------------------------------------------------------------------------


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(text=ARGUMENT)
def test_text_in_a_pipeline_an_input_a_prompt_and_an_answer_is_shown_as_it_is(workdir, text):
    db = workdir / "offline.db"
    job = next_job()
    pipeline = workdir / f"{job}.toml"
    pipeline.write_text(
        OFFLINE.format(name=toml_string(text), model=toml_string(text), job=job),
        encoding="utf-8",
    )
    ran = steplog_here(db, "run", str(pipeline), "--input", f"t={text}", "--job-id", job)
    terminal(ran)
    log = read_log(db, job)
    created = log["first"]["job.created"]
    assert created["inputs"] == {"t": text} and created["pipeline"] == text
    assert log["prompt"] == text and log["first"]["llm.request"]["model"] == text

    status = terminal(steplog_here(db, "status", job))
    in_line(f"pipeline {text}  status succeeded", status)
    in_line(f"input t: {text}", status)
    doc = json.loads(steplog_here(db, "status", job, "--json").out)
    assert doc["inputs"] == {"t": text} and doc["pipeline"] == text

    in_cell(text, terminal(steplog_here(db, "jobs", "--limit", "1")))
    assert json.loads(steplog_here(db, "jobs", "--json", "--limit", "1").out)[0]["pipeline"] == text

    events = terminal(steplog_here(db, "events", job))
    events_shown(log, events)
    lines = steplog_here(db, "events", job, "--json").out.splitlines()
    assert [json.loads(ln)["data"] for ln in lines] == [json.loads(d) for _, _, d in log["events"]]

    replay = terminal(steplog_here(db, "replay", job, "--until", "1"))
    in_line(f"input t: {text}", replay)
    in_cell(log["events"][0][2], replay)

    audit = terminal(steplog_here(db, "audit", job))
    in_line(f"{job} ({text}): succeeded", audit)
    in_cell(text, audit)  # the model, in the table of calls

    show = terminal(steplog_here(db, "show", job, "a"), kept="\n\t")  # blocks keep tabs
    in_line(f"provider local  model {text}  tokens in", show)
    in_block(log["prompt"], show)
    in_block(log["answer"], show)
    assert steplog_here(db, "show", job, "a", "--prompt").out == text
    assert steplog_here(db, "show", job, "a", "--answer").out == log["answer"]

    query = (
        "SELECT json_extract(data, '$.inputs.t') AS input, "
        "(SELECT content FROM blobs WHERE sha256 = :p) AS request "
        "FROM events WHERE job_id = :j AND type = 'job.created'"
    )
    params = ("-p", f"j={job}", "-p", f"p={log['prompt_sha256']}")
    sql = terminal(steplog_here(db, "sql", query, *params))
    below_header = sql.split("\n", 3)[3]
    in_cell(text, below_header)
    in_cell(log["request"], below_header)  # a blob that is text, as text
    assert json.loads(steplog_here(db, "sql", query, *params, "--json").out) == [
        {"input": text, "request": log["request"]}
    ]
    rows = list(csv.reader(io.StringIO(steplog_here(db, "sql", query, *params, "--csv").out)))
    assert rows == [["input", "request"], [text, log["request"]]]

    plan = terminal(steplog_here(db, "plan", str(pipeline), "--input", f"t={text}"))
    in_line(f"plan for {text} (a new run)", plan)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(message=MESSAGE)
def test_an_error_a_server_sends_is_shown_as_it_is(workdir, shared_fake_llm_for_module, message):
    server = shared_fake_llm_for_module
    server.reset()
    db = workdir / "errors.db"
    job = next_job()
    pipeline = workdir / f"{job}.toml"
    pipeline.write_text(SERVER.format(url=server.url), encoding="utf-8")
    server.faults.append(("status", 400, {"error": {"message": message}}, {}))
    ran = steplog_here(db, "run", str(pipeline), "--job-id", job)
    terminal(ran, code=1)
    log = read_log(db, job)
    error = log["first"]["step.failed"]["error"]
    call_error = log["first"]["llm.response"]["error"]
    job_error = log["first"]["job.failed"]["error"]
    assert message in error and message in call_error  # the server's words reached the log
    in_line(f"step.failed     a  {error}", ran.out)
    in_line(f"job {job} failed: {job_error}; after fixing", ran.err)

    in_line(f"last error: {job_error}", terminal(steplog_here(db, "status", job)))
    assert json.loads(steplog_here(db, "status", job, "--json").out)["last_error"] == job_error

    audit = terminal(steplog_here(db, "audit", job))
    in_line(f"step a attempt 1 (http_error): {error}", audit)
    in_line(f"call a attempt 1 (http_error): {call_error}", audit)
    in_line(f"job.failed: {job_error}", audit)

    events_shown(log, terminal(steplog_here(db, "events", job, "--type", "step.*")), "step.")
    show = terminal(steplog_here(db, "show", job, "a"), kept="\n\t")
    in_line(f"error (http_error): {error}", show)
    in_line(f"http_error: {call_error}", show)

    query = "SELECT error FROM llm_calls WHERE job_id = :j"
    in_cell(call_error, terminal(steplog_here(db, "sql", query, "-p", f"j={job}")))
    assert json.loads(steplog_here(db, "sql", query, "-p", f"j={job}", "--json").out) == [
        {"error": call_error}
    ]

    # a server's words that never reach the log: the check of a provider without a model list
    server.no_model_list = True
    server.faults.extend([("status", 400, {"error": {"message": message}}, {})] * 2)
    checked = json.loads(steplog_here(db, "providers", "check", str(pipeline), "--json").out)
    detail = checked[0]["detail"]
    assert message in detail
    table = terminal(steplog_here(db, "providers", "check", str(pipeline)), code=1)
    in_line(f"error: {detail}", table)


@settings(max_examples=50)
@given(text=ARGUMENT)
def test_sql_shows_any_text_and_text_blob_it_selects_as_it_is(sql_db, text):
    query = "SELECT :t AS t, CAST(:t AS BLOB) AS b"
    got = json.loads(steplog_here(sql_db, "sql", query, "-p", f"t={text}", "--json").out)
    if not isinstance(got[0]["t"], str):  # a text that is a number binds as one (README)
        return
    assert got == [{"t": text, "b": text}]
    shown = terminal(steplog_here(sql_db, "sql", query, "-p", f"t={text}"))
    rows = shown.split("\n")[3:]  # below the header
    for piece in visible(text).split("\n"):
        assert any(ln.count(piece) >= 2 for ln in rows) or piece == "", (piece, shown)


@pytest.fixture(scope="module")
def sql_db(workdir: Path) -> Path:
    from steplog.projections.store import open_store

    db = workdir / "sql.db"
    open_store(db).close()  # an empty steplog database (plan no longer creates one)
    return db


@pytest.fixture(scope="module")
def shared_fake_llm_for_module(module_fake_llm_factory):
    return module_fake_llm_factory()


def test_the_issue_examples_are_shown_as_they_are(sql_db, cli):
    """The cases the issue names, one by one."""
    out = terminal(cli(sql_db, "sql", "SELECT '[steps.a] x' AS a, ':smile: [redacted]' AS b"))
    assert "│ [steps.a] x │ :smile: [redacted] │" in out
    out = terminal(cli(sql_db, "sql", "SELECT 'field [messages.0] is [bold]bad[/bold]' AS e"))
    assert "field [messages.0] is [bold]bad[/bold]" in out
    out = terminal(cli(sql_db, "sql", "SELECT char(27) || '[31mred' || char(7) AS e"))
    assert "\\x1b[31mred\\x07" in out
