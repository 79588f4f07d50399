"""Make the README's picture of `steplog ui` from the real app: run the example pipeline
offline into a scratch database, serve it with `steplog ui` on 127.0.0.1, and photograph the
job page in Debian's headless chromium.

    .venv/bin/python scripts/screenshot.py [--output docs/ui-job.png]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "examples" / "factory" / "pipeline.toml"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def steplog(db: Path, *args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "steplog", "--db", str(db), *args], cwd=cwd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "ui-job.png")
    output = parser.parse_args().output.resolve()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch:
        here = Path(scratch)
        db = here / "ui.db"
        steplog(db, "run", str(PIPELINE), "--input", "idea=a chess clock", "--job-id",
                "chess-clock", "--quiet", cwd=here)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "steplog", "--db", str(db), "ui", "--port", "0"],
            cwd=here,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:\d+", server.stdout.readline())
            if found is None:
                print("error: steplog ui printed no URL", file=sys.stderr)
                return 2
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 960})
                page.goto(found.group(0) + "/jobs/chess-clock")
                output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(output))
                browser.close()
        finally:
            server.terminate()
            server.communicate(timeout=20)
    print(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
