"""Pipelines run against the fake server over each wire protocol: what the log records.

In-process executor on a real SQLite file for the event sequences; the real CLI in a
subprocess for the secret test (stdout/stderr are part of what must not hold the key).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from steplog.commands.cli.display import PlainDisplay
from steplog.commands.jobs import RunCommand, execute, prepare_run
from steplog.executor.pipeline import PipelineError, parse_pipeline
from steplog.projections.store import open_store
from tests import fake_llm_server
from tests.cli_process import steplog
from tests.fake_llm_server import FakeLLMServer
from tests.provider_cases import ANTHROPIC, Proto, by_kind, pipeline_toml, streaming

KEY = "sk-run-test-key"


@pytest.fixture
def server(shared_fake_llm: FakeLLMServer) -> FakeLLMServer:  # one per module, reset per test
    return shared_fake_llm


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("WIRE_TEST_KEY", KEY)


def run(tmp_path: Path, text: str, job: str = "j", db: str = "s.db", files: dict | None = None):
    """Run `text` as job `job`; `files` gets the bytes of the database and its WAL before close."""
    path = tmp_path / f"{job}.toml"
    path.write_text(text)
    store = open_store(tmp_path / db)
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id=job, workspace=tmp_path / job)
        )
        outcome = execute(store, prepared, observer=PlainDisplay(prepared.state, quiet=True))
        events = [(ev.type, ev.step, ev.data) for ev in store.read_job(job)]
        if files is not None:
            for name in (db, db + "-wal"):
                files[name] = (tmp_path / name).read_bytes()
    finally:
        store.close()
    return outcome, events


def llm_trace(events, step: str) -> list[tuple]:
    """(type, attempt, success, status, error_class) of a step's provider events."""
    return [
        (t, d.get("attempt"), d.get("success"), d.get("status"), d.get("error_class"))
        for t, s, d in events
        if s == step and t in ("llm.request", "llm.response", "step.retrying")
    ]


def run_with_fault(server, tmp_path: Path, proto: Proto, stream: bool, fault: tuple):
    """Run the two-step pipeline, whole or streamed, with `fault` for the first call."""
    server.faults.append(fault)
    stream_key = f"stream = {str(stream).lower()}"
    return run(tmp_path, pipeline_toml(proto, proto.base_url(server), provider=stream_key))


@by_kind
@streaming
@pytest.mark.parametrize(
    "fault",
    [("status", 429, None, {"Retry-After": "0"}), ("status", 529, None, {}), ("drop",)],
    ids=["429", "529", "drop"],
)
def test_a_retryable_fault_is_retried_and_every_attempt_is_logged(
    server, tmp_path, proto: Proto, stream: bool, fault
) -> None:
    outcome, events = run_with_fault(server, tmp_path, proto, stream, fault)
    assert outcome.succeeded
    status = fault[1] if fault[0] == "status" else None
    error_class = "http_error" if status else "unavailable"
    assert llm_trace(events, "a") == [
        ("llm.request", 1, None, None, None),
        ("llm.response", 1, False, status, error_class),
        ("step.retrying", 1, None, None, None),
        ("llm.request", 2, None, None, None),
        ("llm.response", 2, True, None, None),
    ]
    retrying = next(d for t, s, d in events if t == "step.retrying")
    assert retrying["delay_s"] >= 0 and proto.base_url(server) in retrying["error"]
    answered = [d for t, s, d in events if t == "llm.response" and d["success"]]
    assert all(d["tokens_in"] > 0 and d["tokens_out"] > 0 for d in answered)
    assert {d["finish_reason"] for d in answered} == {proto.stop}


@by_kind
@pytest.mark.parametrize("code", [401, 400])
def test_a_client_error_fails_fast_with_the_servers_message(
    server, tmp_path, proto: Proto, code: int
) -> None:
    message = f"the server says no ({code})"
    error_body = getattr(fake_llm_server, proto.kind.upper()).error_body(code, message)
    server.faults.append(("status", code, error_body, {}))
    outcome, events = run(tmp_path, pipeline_toml(proto, proto.base_url(server)))
    assert not outcome.succeeded and outcome.failed_steps == ["a"]
    assert llm_trace(events, "a") == [
        ("llm.request", 1, None, None, None),
        ("llm.response", 1, False, code, "http_error"),
    ]  # max_retries = 2, yet no retry
    failed = next(d for t, s, d in events if t == "step.failed")
    assert message in failed["error"] and f"HTTP {code}" in failed["error"]
    assert failed["error_type"] == "http_error"
    assert len(server.calls) == 1


@by_kind
@streaming
@pytest.mark.parametrize("fault", [("garbage",), ("empty",)], ids=["malformed_json", "empty"])
def test_an_unusable_answer_fails_fast_and_is_recorded(
    server, tmp_path, proto: Proto, stream: bool, fault
) -> None:
    outcome, events = run_with_fault(server, tmp_path, proto, stream, fault)
    assert not outcome.succeeded and outcome.failed_steps == ["a"]
    assert llm_trace(events, "a") == [
        ("llm.request", 1, None, None, None),
        ("llm.response", 1, False, 200, "bad_response"),
    ]  # max_retries = 2, yet no retry: the same request would get the same answer
    response = next(d for t, s, d in events if t == "llm.response")
    assert response["retryable"] is False and proto.base_url(server) in response["error"]
    failed = next(d for t, s, d in events if t == "step.failed")
    assert failed["error_type"] == "bad_response" and failed["error"] == response["error"]
    assert len(server.calls) == 1


@by_kind
def test_streamed_runs_record_what_whole_runs_record(server, tmp_path, proto: Proto) -> None:
    base = proto.base_url(server)
    _, whole = run(tmp_path, pipeline_toml(proto, base), job="whole", db="whole.db")
    _, streamed = run(
        tmp_path,
        pipeline_toml(proto, base, provider="stream = true"),
        job="streamed",
        db="streamed.db",
    )

    def answers(events):
        return [
            (s, d["response_sha256"], d["tokens_in"], d["tokens_out"], d["finish_reason"])
            for t, s, d in events
            if t == "llm.response"
        ]

    assert answers(whole) == answers(streamed) and len(answers(whole)) == 2
    assert all(
        tokens_in > 0 and tokens_out > 0 for _, _, tokens_in, tokens_out, _ in answers(whole)
    )
    outputs = [
        [d["output_sha256"] for t, _, d in ev if t == "step.succeeded"] for ev in (whole, streamed)
    ]
    assert outputs[0] == outputs[1]
    assert [c["body"].get("stream") is True for c in server.calls] == [False, False, True, True]


@by_kind
def test_on_truncation_error_fails_the_step_without_retrying(
    server, tmp_path, proto: Proto
) -> None:
    server.faults.append(("truncated", "an answer cut"))
    text = pipeline_toml(proto, proto.base_url(server)).replace(
        'prompt = "Write about', 'on_truncation = "error"\nprompt = "Write about'
    )
    outcome, events = run(tmp_path, text)
    assert outcome.failed_steps == ["a"]
    assert llm_trace(events, "a")[-1] == ("llm.response", 1, False, None, "truncated")
    failed = next(d for t, s, d in events if t == "step.failed")
    assert failed["error_type"] == "truncated" and "cut off at the token limit" in failed["error"]


@by_kind
def test_on_truncation_accept_keeps_the_answer(server, tmp_path, proto: Proto) -> None:
    server.faults.append(("truncated", "an answer cut"))
    outcome, events = run(tmp_path, pipeline_toml(proto, proto.base_url(server)))
    assert outcome.succeeded
    first = next(d for t, s, d in events if t == "llm.response" and s == "a")
    assert first["finish_reason"] == proto.limit


@by_kind
def test_step_overrides_of_model_and_options_reach_the_wire(server, tmp_path, proto: Proto) -> None:
    step_b = 'model = "bigger"\noptions = { temperature = 0.5, max_tokens = 99 }'
    outcome, _ = run(tmp_path, pipeline_toml(proto, proto.base_url(server), step_b=step_b))
    assert outcome.succeeded
    a, b = (c["body"] for c in server.calls)
    assert (a["model"], b["model"]) == ("m", "bigger")
    sent = b["options"] if proto.kind == "ollama" else b
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 99


def test_anthropic_without_max_tokens_is_refused_at_load_time() -> None:
    text = pipeline_toml(ANTHROPIC, "http://127.0.0.1:9").replace("max_tokens = 64", "")
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, "p.toml")
    message = str(info.value)
    assert "provider 'remote' (kind anthropic) needs options.max_tokens" in message
    assert "\n" not in message
    # a step may give it instead, but then every step on that provider must
    fixed = text.replace('output = "json"', 'output = "json"\noptions = { max_tokens = 10 }')
    with pytest.raises(PipelineError, match="for step 'a'"):
        parse_pipeline(fixed, "p.toml")
    with pytest.raises(PipelineError, match="is 0, not a positive integer"):
        parse_pipeline(text.replace("options = {  }", "options = { max_tokens = 0 }"), "p.toml")


# -- the key, end to end through the CLI -----------------------------------------------------------


@pytest.mark.slow
@by_kind
def test_the_key_is_nowhere_but_in_the_header(server, tmp_path, proto: Proto) -> None:
    secret = f"sk-{proto.kind}-DISTINCTIVE-7f3a9c21e4"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(pipeline_toml(proto, proto.base_url(server), provider="stream = true"))
    db, env = tmp_path / "s.db", {"WIRE_TEST_KEY": secret}
    server.require_key = secret
    ok = steplog(db, "run", str(pipeline), "--job-id", "ok", env=env)
    assert ok.code == 0, ok.err
    assert {c["headers"][proto.auth_header] for c in server.calls} == {proto.auth(secret)}
    # a server that refuses the key and quotes it back
    server.require_key = "sk-something-else"
    failed = steplog(db, "run", str(pipeline), "--job-id", "refused", "-i", "topic=coffee", env=env)
    assert failed.code == 1 and "HTTP 401" in failed.err and "[redacted]" in failed.err
    outputs = [ok.out, ok.err, failed.out, failed.err]
    for args in (
        ("events", "ok", "--json"),
        ("events", "refused", "--json"),
        ("status", "refused"),
    ):
        shown = steplog(db, *args, env=env)
        assert shown.code == 0, shown.err
        outputs += [shown.out, shown.err]
    assert "Incorrect API key provided: [redacted]" in "".join(outputs)
    for text in outputs:
        assert secret not in text
    # in-process too, to read the WAL while it is still there (a clean close checkpoints it away)
    server.require_key = secret
    grabbed: dict[str, bytes] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WIRE_TEST_KEY", secret)
        text = pipeline.read_text().replace('default = "tea"', 'default = "mate"')
        outcome, events = run(tmp_path, text, job="inproc", db="s.db", files=grabbed)
    assert (
        outcome.succeeded
        and [t for t, _, _ in events].count("llm.response") == 2
        and len(grabbed["s.db-wal"]) > 0
    )
    for name, content in grabbed.items():
        assert secret.encode() not in content, name
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert tmp_path / "s.db" in files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
