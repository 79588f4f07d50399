"""A deterministic provider with no network: the same request always gets the same answer.

It lets the example pipeline run end to end offline and gives tests and benchmarks a provider
whose cost is known. Answers depend on the output kind: prose for text, an object for json, a
small working Python project for files. Options it understands (all part of the cache key, like
any option): `delay_s` (sleep before answering) and `fail` (raise ProviderUnavailable).

STEPLOG_OFFLINE_CALL_LOG names a file that gets one line per call ("<step>\\n"), so crash tests
can count provider calls across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap

import anyio

from steplog.providers.base import LLMRequest, LLMResult, ProviderUnavailable
from steplog.providers.config import ProviderConfig


def _words(text: str) -> int:
    return len(text.split())


def _topic(prompt: str) -> str:
    first = next((ln.strip() for ln in prompt.splitlines() if ln.strip()), "something")
    return first[:120]


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words[:4]) or "app"


_DESIGN = textwrap.dedent(
    """\
    # Design notes ({step})

    Request: {topic}

    ## Components
    - a command-line entry point that parses sub-commands (add, list, done)
    - a store that keeps items in a JSON file next to the program
    - tests for every sub-command

    ## Decisions
    - standard library only, so it runs anywhere Python 3.11 does
    - each item has an id, a title and a done flag

    (offline answer {answer})
    """
)


def _design(request: LLMRequest, digest: str) -> str:
    return _DESIGN.format(step=request.step, topic=_topic(request.prompt), answer=digest[:12])


_APP = textwrap.dedent(
    '''\
    """A small item list kept in items.json: add, list, done."""
    import json
    import sys
    from pathlib import Path

    STORE = Path(__file__).with_name("items.json")


    def load():
        return json.loads(STORE.read_text()) if STORE.exists() else []


    def save(items):
        STORE.write_text(json.dumps(items, indent=2))


    def main(argv):
        items = load()
        if argv[:1] == ["add"] and len(argv) > 1:
            items.append({"id": len(items) + 1, "title": " ".join(argv[1:]), "done": False})
            save(items)
        elif argv[:1] == ["done"] and len(argv) == 2:
            for item in items:
                if str(item["id"]) == argv[1]:
                    item["done"] = True
            save(items)
        elif argv[:1] in ([], ["list"]):
            for item in items:
                print(f"{item['id']:>3} [{'x' if item['done'] else ' '}] {item['title']}")
        else:
            print("usage: app.py [list | add TITLE | done ID]", file=sys.stderr)
            return 2
        return 0


    if __name__ == "__main__":
        raise SystemExit(main(sys.argv[1:]))
    '''
)

_TEST = textwrap.dedent(
    """\
    import subprocess
    import sys
    from pathlib import Path

    APP = Path(__file__).resolve().parent.parent / "app.py"


    def test_add_then_list(tmp_path):
        copy = tmp_path / "app.py"
        copy.write_text(APP.read_text())
        subprocess.run([sys.executable, copy, "add", "write", "docs"], check=True)
        out = subprocess.run([sys.executable, copy, "list"], check=True, capture_output=True, text=True)
        assert "write docs" in out.stdout
    """
)


def _project(request: LLMRequest, digest: str) -> str:
    name = _slug(_topic(request.prompt).replace("Implement this design", ""))
    readme = f"# {name}\n\nGenerated offline (answer {digest[:12]}).\n\n    python app.py add milk\n    python app.py list\n"
    files = [
        {"path": "app.py", "content": _APP},
        {"path": "tests/test_app.py", "content": _TEST},
        {"path": "README.md", "content": readme},
    ]
    return json.dumps({"files": files}, indent=2)


def _review(request: LLMRequest, digest: str) -> str:
    return json.dumps(
        {
            "step": request.step,
            "verdict": "pass",
            "findings": [
                "every sub-command has a test" if "test" in request.prompt else "add tests",
                "items are stored as JSON",
            ],
            "answer": digest[:12],
        },
        indent=2,
    )


class OfflineProvider:
    kind = "offline"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config

    async def complete(self, request: LLMRequest) -> LLMResult:
        delay = float(request.options.get("delay_s", 0) or 0)
        if delay:
            await anyio.sleep(delay)
        if request.options.get("fail"):
            raise ProviderUnavailable(
                "offline provider told to fail (options.fail)", provider=self.name
            )
        log = os.environ.get("STEPLOG_OFFLINE_CALL_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{request.step}\n")
        material = json.dumps(
            [request.model, request.system, request.prompt, request.options], sort_keys=True
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        if request.output == "files":
            text = _project(request, digest)
        elif request.output == "json":
            text = _review(request, digest)
        else:
            text = _design(request, digest)
        return LLMResult(
            text=text,
            model=request.model,
            tokens_in=_words(request.prompt) + _words(request.system or ""),
            tokens_out=_words(text),
            finish_reason="stop",
        )
