"""A credential in a provider's base_url (a proxy password, a key some gateways take in the
query) must never reach the database: the pipeline file is stored as a blob for resume. Written
out it is refused at load time; written as ${NAME} it is read from the environment when calling."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from steplog.providers.config import ProviderConfig, literal_url_credential
from tests.cli_process import steplog

SECRET = "pr0xy-Pa55-7c1d"


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("http://u:hunter2@127.0.0.1/v1", "a password"),
        ("http://127.0.0.1/v1?api-key=abc", "query parameter 'api-key'"),
        ("http://127.0.0.1/v1?access_token=abc&x=1", "query parameter 'access_token'"),
        ("http://127.0.0.1/v1?SIG=abc", "query parameter 'SIG'"),
        ("http://u:${PW}@127.0.0.1/v1", None),
        ("http://127.0.0.1/v1?api-key=${KEY}", None),
        ("http://127.0.0.1/v1?api-version=2024-06-01", None),
        ("http://user@127.0.0.1/v1", None),
        (None, None),
    ],
)
def test_literal_credentials_are_found_and_references_are_not(url, found):
    assert literal_url_credential(url) == found


def test_references_resolve_from_the_environment_and_name_what_is_missing():
    config = ProviderConfig(kind="openai", base_url="http://u:${PW}@127.0.0.1/v1?k=${K}")
    assert config.resolved_base_url({"PW": "p", "K": "q"}) == "http://u:p@127.0.0.1/v1?k=q"
    with pytest.raises(ValueError, match="base_url reads K, which is not set"):
        config.resolved_base_url({"PW": "p"})


def _pipeline(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        "\n".join(
            [
                'name = "creds"',
                "[providers.remote]",
                'kind = "openai"',
                f'base_url = "{base_url}"',
                'model = "fake-model"',
                "[steps.a]",
                'provider = "remote"',
                'prompt = "Say hi."',
            ]
        )
        + "\n"
    )
    return path


@pytest.mark.slow
def test_a_password_written_into_base_url_is_refused_before_anything_is_stored(tmp_path):
    db = tmp_path / "s.db"
    pipeline = _pipeline(tmp_path, f"http://proxy:{SECRET}@127.0.0.1:9/v1")
    result = steplog(db, "run", str(pipeline))
    assert result.code == 2
    assert result.err.count("\n") == 1 and "base_url holds a password written out" in result.err
    assert SECRET not in result.err + result.out
    assert not db.exists() or SECRET.encode() not in db.read_bytes()


@pytest.mark.slow
def test_a_password_read_from_the_environment_is_sent_and_never_stored(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    pipeline = _pipeline(tmp_path, f"http://proxy:${{PROXY_PW}}@127.0.0.1:{server.port}/v1")
    missing = steplog(db, "run", str(pipeline), "--job-id", "j")
    assert missing.code == 2 and "reads part of its base_url from PROXY_PW" in missing.err
    result = steplog(db, "run", str(pipeline), "--job-id", "j", env={"PROXY_PW": SECRET})
    assert result.code == 0, result.err
    [call] = server.calls
    sent = {k.lower(): v for k, v in call["headers"].items()}["authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")).decode() == f"proxy:{SECRET}"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.out + result.err


@pytest.mark.slow
def test_a_password_that_breaks_the_url_is_never_quoted_back(tmp_path):
    """A '/' in the password ends the URL's host part early, so the parser reads part of the
    password as the port and quotes it in its error: `providers check` printed that part."""
    db, leaked = tmp_path / "s.db", "s3cr"
    pipeline = _pipeline(tmp_path, "http://u:${PROXY_PW}@127.0.0.1:1/v1")
    env = {"PROXY_PW": f"{leaked}/et:xyz"}
    checked = steplog(db, "providers", "check", str(pipeline), env=env)
    run = steplog(db, "run", str(pipeline), env=env)
    assert checked.code == 1 and "bad port" in checked.out
    assert (
        run.code == 2 and "base_url, with PROXY_PW from the environment, has a bad port" in run.err
    )
    for result in (checked, run):
        assert leaked not in result.out + result.err
