"""A real job with every kind of timeline bar: cache hits, retries, failed LLM calls, a failed
step, a resume with skipped steps, and dependencies — run by the real CLI against a fake
OpenAI-compatible server on 127.0.0.1 and a closed 127.0.0.1 port."""

from __future__ import annotations

from pathlib import Path

from tests.cli_process import steplog
from tests.fake_llm_server import FakeLLMServer, closed_port

KEY_ENV = {"OPENAI_API_KEY": "sk-test"}
RICH_JOB = "rich"
STEPS = ["plan", "research", "draft", "review", "publish"]
NEEDS = {
    "research": ["plan"],
    "draft": ["plan"],
    "review": ["research", "draft"],
    "publish": ["review"],
}

PIPELINE = """\
name = "newsroom"

[inputs.topic]
default = "tides"

[providers.local]
kind = "offline"

[providers.remote]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "fake-1"
api_key_env = "OPENAI_API_KEY"
max_retries = 3

[providers.broken]
kind = "openai"
base_url = "http://127.0.0.1:{closed}/v1"
model = "fake-1"
api_key_env = "OPENAI_API_KEY"
max_retries = 1
timeout_s = 5

[steps.plan]
provider = "local"
prompt = "Make a plan."

[steps.research]
needs = ["plan"]
provider = "remote"
prompt = "Research {{{{ inputs.topic }}}} along {{{{ steps.plan.output }}}}"

[steps.draft]
needs = ["plan"]
provider = "{draft_provider}"
prompt = "Draft an article on {{{{ inputs.topic }}}}."

[steps.review]
needs = ["research", "draft"]
provider = "local"
prompt = "Review {{{{ steps.draft.output }}}} against {{{{ steps.research.output }}}}"

[steps.publish]
needs = ["review"]
provider = "remote"
prompt = "Publish {{{{ steps.review.output }}}}"
"""


def make_rich_job(tmp_path: Path, server: FakeLLMServer) -> Path:
    """Runs, against `server` (a fresh fake, e.g. from the module_fake_llm_factory fixture): a
    warm-up job (fills the cache for `plan`), then RICH_JOB, which hits the cache for plan,
    retries research twice (503s), fails draft (provider down), and is resumed with a fixed
    pipeline. Returns the database."""
    db = tmp_path / "rich.db"
    closed = closed_port()
    broken = tmp_path / "broken.toml"
    fixed = tmp_path / "fixed.toml"
    broken.write_text(PIPELINE.format(port=server.port, closed=closed, draft_provider="broken"))
    fixed.write_text(PIPELINE.format(port=server.port, closed=closed, draft_provider="remote"))
    warm = steplog(
        db, "run", str(fixed), "--job-id", "warmup", "--input", "topic=moons", env=KEY_ENV
    )
    assert warm.code == 0, warm.err
    server.faults.extend([("status", 503, None, {"Retry-After": "0"})] * 2)
    first = steplog(db, "run", str(broken), "--job-id", RICH_JOB, env=KEY_ENV)
    assert first.code == 1, first.err
    again = steplog(db, "resume", RICH_JOB, "--pipeline", str(fixed), env=KEY_ENV)
    assert again.code == 0, again.err
    return db
