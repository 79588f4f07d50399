"""`steplog providers check` through the real CLI in a subprocess, against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_process import steplog
from tests.fake_llm_server import FakeLLMServer, closed_port

pytestmark = pytest.mark.slow  # the real CLI in a subprocess, every test

KEY = "sk-check-DISTINCTIVE-55aa"


@pytest.fixture
def server(shared_fake_llm: FakeLLMServer) -> FakeLLMServer:  # one per module, reset per test
    shared_fake_llm.models[:] = ["gpt-x", "llama3.2", "claude-y"]
    return shared_fake_llm


def write_pipeline(tmp_path: Path, providers: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(f'name = "check"\n{providers}\n[steps.a]\nprovider = "local"\nprompt = "hi"\n')
    return path


def all_kinds(server: FakeLLMServer, key_env: str = "CHECK_KEY") -> str:
    return f"""
[providers.local]
kind = "offline"

[providers.gpt]
kind = "openai"
base_url = "{server.url}"
model = "gpt-x"
api_key_env = "{key_env}"

[providers.llama]
kind = "ollama"
base_url = "{server.base}"
model = "llama3.2"

[providers.claude]
kind = "anthropic"
base_url = "{server.base}"
model = "claude-y"
api_key_env = "{key_env}"
options = {{ max_tokens = 100 }}
"""


def test_every_kind_reachable(server, tmp_path) -> None:
    server.require_key = None
    pipeline = write_pipeline(tmp_path, all_kinds(server))
    result = steplog(
        tmp_path / "s.db", "providers", "check", str(pipeline), "--json", env={"CHECK_KEY": KEY}
    )
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [(r["provider"], r["kind"], r["ok"]) for r in rows] == [
        ("local", "offline", True),
        ("gpt", "openai", True),
        ("llama", "ollama", True),
        ("claude", "anthropic", True),
    ]
    assert rows[1]["url"] == server.url and rows[2]["url"] == server.base
    assert rows[1]["detail"] == "3 models; gpt-x listed"
    assert rows[2]["detail"] == "3 models; llama3.2 is pulled"
    table = steplog(tmp_path / "s.db", "providers", "check", str(pipeline), env={"CHECK_KEY": KEY})
    assert table.code == 0 and table.out.count("OK") == 4 and "gpt-x listed" in table.out
    assert not (tmp_path / "s.db").exists() or KEY.encode() not in (tmp_path / "s.db").read_bytes()


def test_a_refused_key_names_provider_url_status_and_message(server, tmp_path) -> None:
    server.require_key = "sk-the-right-one"
    pipeline = write_pipeline(tmp_path, all_kinds(server))
    result = steplog(
        tmp_path / "s.db", "providers", "check", str(pipeline), "--json", env={"CHECK_KEY": KEY}
    )
    server.require_key = None
    assert result.code == 1, result.err
    rows = {r["provider"]: r for r in json.loads(result.out)}
    assert rows["local"]["ok"] and not rows["gpt"]["ok"] and not rows["claude"]["ok"]
    assert rows["gpt"]["detail"] == (
        f"provider 'gpt': {server.url}/models: HTTP 401: Incorrect API key provided: [redacted]"
    )
    assert rows["claude"]["detail"].startswith(
        f"provider 'claude': {server.base}/v1/models: HTTP 401"
    )
    assert KEY not in result.out + result.err


def test_connection_refused_and_missing_key_are_rows_not_crashes(server, tmp_path) -> None:
    port = closed_port()
    providers = f"""
[providers.local]
kind = "offline"

[providers.down]
kind = "openai"
base_url = "http://user:${{CHECK_PROXY_PW}}@127.0.0.1:{port}/v1"
model = "m"

[providers.nokey]
kind = "anthropic"
base_url = "{server.base}"
model = "claude-y"
api_key_env = "CHECK_KEY_NOT_SET"
options = {{ max_tokens = 1 }}

[providers.missing]
kind = "ollama"
base_url = "{server.base}"
model = "mistral"
"""
    pipeline = write_pipeline(tmp_path, providers)
    result = steplog(
        tmp_path / "s.db", "providers", "check", str(pipeline), env={"CHECK_PROXY_PW": "hunter2pw"}
    )
    assert result.code == 1, result.err
    assert "Traceback" not in result.err and result.err == ""
    lines = {line.split("│")[1].strip(): line for line in result.out.splitlines() if "│" in line}
    assert "OK" in lines["local"]
    assert f"http://127.0.0.1:{port}/v1" in lines["down"] and "ConnectError" in lines["down"]
    assert "hunter2pw" not in result.out and "user:" not in result.out
    assert "CHECK_KEY_NOT_SET (api_key_env) is not set" in lines["nokey"]
    assert "model 'mistral' is not pulled" in lines["missing"]


def test_a_bad_pipeline_is_one_line_and_exit_2(tmp_path) -> None:
    result = steplog(tmp_path / "s.db", "providers", "check", str(tmp_path / "nope.toml"))
    assert result.code == 2 and result.err.count("\n") == 1 and "does not exist" in result.err
