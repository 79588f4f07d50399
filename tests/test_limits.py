"""Limits: an answer past max_response_bytes is refused, unretried; a large allowed one round-trips.

Real servers on 127.0.0.1 (the fake LLM server, and a runaway one that never stops sending), a
real SQLite file, the real executor. Sizes are a few MB so the file stays fast; bench/limits.py
measures 100 MB answers and peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.commands.cli.display import PlainDisplay
from steplog.commands.jobs import RunCommand, execute, prepare_run
from steplog.executor.pipeline import PipelineError, parse_pipeline
from steplog.projections.store import open_store
from steplog.providers.base import ProviderTooLarge
from steplog.providers.http import LineSplitter, TextParts
from tests import fake_llm_server
from tests.fake_llm_server import FakeLLMServer
from tests.provider_cases import ANTHROPIC, Proto, by_kind, call, streaming

# several bytes per character, so chunk edges fall inside UTF-8 sequences
PATTERN = "ascii, é, ✓, 日本語, 🙂 — one line\n"


@pytest.fixture
def server(shared_fake_llm: FakeLLMServer) -> FakeLLMServer:  # one per module, reset per test
    return shared_fake_llm


@pytest.fixture(autouse=True)
def _big_pieces(monkeypatch):
    # big stream pieces: a few MB in 7-character events would take the test seconds each
    monkeypatch.setattr(fake_llm_server, "STREAM_PIECE", 4096)


def one_step(
    proto: Proto, base: str, *, stream: bool, limit: int | None = None, output: str = "text"
) -> str:
    options = ", ".join(f"{k} = {v!r}" for k, v in proto.options.items())
    return f"""
name = "limits"

[providers.remote]
kind = "{proto.kind}"
base_url = "{base}"
model = "m"
timeout_s = 5
max_retries = 2
backoff_base_s = 0
stream = {str(stream).lower()}
options = {{ {options} }}
{f"max_response_bytes = {limit}" if limit else ""}

[steps.a]
provider = "remote"
prompt = "a long answer please"
output = "{output}"
"""


def run(tmp_path: Path, text: str) -> tuple[Any, list[tuple[str, str | None, dict]], Path]:
    path = tmp_path / "p.toml"
    path.write_text(text)
    db = tmp_path / "s.db"
    store = open_store(db)
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "ws")
        )
        outcome = execute(store, prepared, observer=PlainDisplay(prepared.state, quiet=True))
        events = [(ev.type, ev.step, ev.data) for ev in store.read_job("j")]
    finally:
        store.close()
    return outcome, events, db


def blob(db: Path, sha: str) -> bytes:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT content FROM blobs WHERE sha256 = ?", (sha,)).fetchone()[0]
    finally:
        conn.close()


# -- over the limit ---------------------------------------------------------------------------


@by_kind
@streaming
def test_an_answer_over_max_response_bytes_fails_the_step_without_a_retry(
    server, tmp_path, proto: Proto, stream: bool
) -> None:
    server.faults.append(("answer", "x" * 50_000))
    outcome, events, db = run(
        tmp_path, one_step(proto, proto.base_url(server), stream=stream, limit=10_000)
    )
    assert not outcome.succeeded and outcome.failed_steps == ["a"]
    trace = [
        (t, d.get("success"), d.get("error_class"))
        for t, s, d in events
        if t in ("llm.request", "llm.response", "step.retrying")
    ]
    assert trace == [("llm.request", None, None), ("llm.response", False, "too_large")]
    failed = next(d for t, _, d in events if t == "step.failed")
    assert failed["error_type"] == "too_large"
    assert "max_response_bytes = 10,000" in failed["error"]
    assert proto.base_url(server) in failed["error"]
    assert len(server.calls) == 1  # max_retries = 2, yet one call: the same answer would come again
    conn = sqlite3.connect(db)
    try:  # nothing of the refused answer was stored
        assert conn.execute("SELECT max(size) FROM blobs").fetchone()[0] < 10_000
    finally:
        conn.close()


@pytest.mark.slow
def test_the_cli_names_the_limit_on_one_line(server, tmp_path) -> None:
    from tests.cli_process import steplog
    from tests.provider_cases import OPENAI

    server.faults.append(("answer", "y" * 5_000))
    (tmp_path / "p.toml").write_text(one_step(OPENAI, server.url, stream=False, limit=1_000))
    result = steplog(tmp_path / "s.db", "run", "p.toml", "--job-id", "j")
    assert result.code == 1, result.err
    said = result.out + result.err
    assert "max_response_bytes = 1,000" in said and "Traceback" not in said


class _Runaway(BaseHTTPRequestHandler):
    """A broken server: 200, then 64 KiB chunks with no line end and no end, up to a bound."""

    protocol_version = "HTTP/1.1"
    CHUNKS = 400  # 25 MiB: far past the limit under test, and a bound on the test's work
    sent: list[int] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        streamed = "stream" in self.path  # the test's base_url says which shape to send
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if streamed else "application/json")
        self.send_header("Transfer-Encoding", "chunked")  # no Content-Length to refuse up front
        self.end_headers()
        piece = b"data: " if streamed else b'{"choices": [{"message": {"content": "'
        count = 0
        try:
            for count in range(1, self.CHUNKS + 1):  # noqa: B007 - read in finally
                chunk = piece + b"z" * (64 * 1024)
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                piece = b""
        except OSError:  # the client hung up: what the test wants
            pass
        finally:
            _Runaway.sent.append(count)
            self.close_connection = True


@streaming
def test_a_runaway_server_is_cut_off_at_the_limit(stream: bool) -> None:
    _Runaway.sent = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Runaway)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        from tests.provider_cases import OPENAI

        base = f"http://127.0.0.1:{httpd.server_address[1]}/{'stream' if stream else 'whole'}/v1"
        config = OPENAI.config(base, stream=stream, max_response_bytes=256 * 1024)
        with pytest.raises(ProviderTooLarge) as caught:
            call(config, OPENAI.request())
        assert "max_response_bytes = 262,144" in str(caught.value)
        assert caught.value.retryable is False
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    # the handler runs in a thread of its own, which shutdown() does not wait for: give it time
    # to see the hang-up and record what it sent
    deadline = time.monotonic() + 10
    while not _Runaway.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    # the client stopped reading: the server could not send all it wanted
    assert _Runaway.sent and _Runaway.sent[0] < _Runaway.CHUNKS


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(server) -> None:
    from tests.provider_cases import OPENAI

    server.faults.append(("answer", "w" * 3_000))
    with pytest.raises(ProviderTooLarge, match=r"Content-Length"):
        call(OPENAI.config(server, max_response_bytes=2_000), OPENAI.request())


def test_max_response_bytes_must_be_positive_and_storable() -> None:
    base = one_step(ANTHROPIC, "http://127.0.0.1:9", stream=False)
    for bad in ("0", "-1", "2_000_000_000"):
        with pytest.raises(PipelineError, match="max_response_bytes"):
            parse_pipeline(base.replace('model = "m"', f'model = "m"\nmax_response_bytes = {bad}'))


# -- large but allowed ------------------------------------------------------------------------


@by_kind
@streaming
def test_a_large_answer_round_trips_byte_identical(
    server, tmp_path, proto: Proto, stream: bool
) -> None:
    text = PATTERN * (3_000_000 // len(PATTERN))  # 3M characters, 4.3 MB of UTF-8
    server.faults.append(("answer", text))
    outcome, events, db = run(tmp_path, one_step(proto, proto.base_url(server), stream=stream))
    assert outcome.succeeded
    expected = text.encode("utf-8")
    digest = hashlib.sha256(expected).hexdigest()
    response = next(d for t, _, d in events if t == "llm.response")
    succeeded = next(d for t, _, d in events if t == "step.succeeded")
    assert response["response_sha256"] == digest and succeeded["output_sha256"] == digest
    assert blob(db, digest) == expected


@streaming
def test_a_large_file_round_trips_byte_identical_to_the_workspace(
    server, tmp_path, stream: bool
) -> None:
    from tests.provider_cases import OPENAI

    content = PATTERN * (2_000_000 // len(PATTERN))
    server.faults.append(
        ("answer", json.dumps({"files": [{"path": "big.txt", "content": content}]}))
    )
    outcome, events, db = run(tmp_path, one_step(OPENAI, server.url, stream=stream, output="files"))
    assert outcome.succeeded
    expected = content.encode("utf-8")
    assert (tmp_path / "ws" / "big.txt").read_bytes() == expected
    written = next(d for t, _, d in events if t == "file.written")
    assert written["sha256"] == hashlib.sha256(expected).hexdigest()
    assert written["size"] == len(expected)


# -- the pure pieces --------------------------------------------------------------------------

_line_bytes = st.binary(max_size=40) | st.text(max_size=20).map(lambda s: s.encode("utf-8"))
_ending = st.sampled_from([b"\n", b"\r\n", b"\r", b""])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_line_bytes, _ending), max_size=12), st.data())
def test_line_splitter_splits_any_chunking_as_splitlines_does_the_whole(parts, data) -> None:
    whole = b"".join(line + end for line, end in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    splitter = LineSplitter()
    got = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.end()
    assert got == [line.decode("utf-8", "replace") for line in whole.splitlines()]


def test_line_splitter_keeps_unicode_line_separators_inside_a_line() -> None:
    # str.splitlines (and so httpx's aiter_lines) would cut a JSON string holding a raw U+2028
    event = 'data: {"delta": "a\u2028b\u0085c"}\n\n'.encode()
    splitter = LineSplitter()
    assert splitter.feed(event[:9]) + splitter.feed(event[9:]) + splitter.end() == [
        'data: {"delta": "a\u2028b\u0085c"}',
        "",
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=60), st.integers(1, 64))
def test_text_parts_joins_pieces_in_order(pieces, chunk) -> None:
    parts = TextParts()
    parts.CHUNK = chunk  # small chunks so the coalescing path runs
    for piece in pieces:
        parts.append(piece)
    assert parts.text() == "".join(pieces) == parts.text()


# -- long jobs: what status and events print --------------------------------------------------


def _console() -> tuple[Any, Any]:
    import io

    from rich.console import Console

    out = io.StringIO()
    return Console(file=out, width=160), out


def test_status_of_a_long_job_lists_the_steps_needing_attention_and_counts_the_rest() -> None:
    from steplog.commands.cli.render import STEP_ROWS, print_manifest
    from steplog.projections.manifest import JobState, StepState

    n = STEP_ROWS * 3
    state = JobState(job_id="long", status="failed")
    for i in range(n):
        state.steps[f"s{i}"] = StepState(name=f"s{i}", status="succeeded")
    state.steps[f"s{n - 1}"].status = "failed"  # the last: not in the first 200 by order
    for i in range(n - 11, n - 1):
        state.steps[f"s{i}"].status = "pending"
    console, out = _console()
    print_manifest(console, state)
    text = out.getvalue()
    listed = [
        line.split("│")[1].strip()
        for line in text.splitlines()
        if line.startswith("│") and line.split("│")[1].strip().startswith("s")
    ]
    assert len(listed) == STEP_ROWS
    assert f"s{n - 1}" in listed and all(f"s{i}" in listed for i in range(n - 11, n - 1))
    assert listed == sorted(listed, key=lambda s: int(s[1:]))  # in pipeline order
    assert f"… and {n - STEP_ROWS:,} more steps ({n - STEP_ROWS:,} succeeded)" in text
    assert f"({n - 11:,} in all;" in text  # completed_steps: 589 names, the first 200 shown
    assert "pending_steps: s589" in text


def test_events_are_read_lazily_and_printed_as_aligned_pages(tmp_path, monkeypatch) -> None:
    import steplog.eventstore.sqlite
    from steplog.commands.cli.render import EVENT_PAGE, print_events
    from steplog.commands.queries import events
    from steplog.eventstore.events import NewEvent, StepStarted

    monkeypatch.setattr(steplog.eventstore.sqlite, "READ_BATCH", 50)  # the job is 9 batches
    store = open_store(tmp_path / "s.db")
    try:
        total = EVENT_PAGE * 2 + 17
        batch = [
            NewEvent.of(StepStarted(attempt=1, fingerprint="f" * 64), step=f"s{i}")
            for i in range(total)
        ]
        store.append("long", batch)
        statements: list[str] = []
        store.conn.set_trace_callback(statements.append)
        found = events(store, "long")
        first = next(found)
        reads = [s for s in statements if "FROM events" in s]
        assert first.version == 1 and len(reads) == 1  # one batch read so far, not the job
        store.conn.set_trace_callback(None)
        console, out = _console()
        print_events(console, events(store, "long"))
    finally:
        store.close()
    lines = out.getvalue().splitlines()
    rows = [line for line in lines if line.split("│")[0].strip().isdigit()]
    assert [int(r.split("│")[0]) for r in rows] == list(range(1, total + 1))
    assert sum(" # " in line and "type" in line for line in lines) == 1  # one header
    assert len({len(line) for line in lines}) == 1  # the pages line up as one table


def test_the_manifest_document_is_what_asdict_gives() -> None:
    """to_manifest skips dataclasses.asdict's recursion per step; the document is unchanged."""
    from dataclasses import asdict

    from steplog.projections.manifest import JobState, StepState

    state = JobState(job_id="j", status="running", inputs={"a": "b"}, owner={"pid": 1})
    state.steps = {
        f"s{i}": StepState(
            name=f"s{i}",
            needs=[f"s{i - 1}"] if i else [],
            files=["x.py"] * i,
            status="succeeded",
            tokens_in=i,
        )
        for i in range(5)
    }
    want = asdict(state)
    for step in want["steps"].values():
        del step["open_call"]  # folding state (the request awaiting its answer), not shown
        del step["open_reserved"]
    want["elapsed_s"] = state.elapsed_s
    want["completed_steps"], want["pending_steps"] = state.completed_steps, state.pending_steps
    got = state.to_manifest()
    assert got == want and list(got) == list(want)
    assert list(got["steps"]["s1"]) == list(want["steps"]["s1"])
    got["steps"]["s1"]["needs"].append("changed")  # a copy: the state is not touched
    assert state.steps["s1"].needs == ["s0"]
