"""Small pipelines for the process tests (concurrency, signals), and a stderr reader."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path


def dag_pipeline(
    tmp_path: Path,
    steps: dict[str, tuple[list[str], float]],
    *,
    name: str = "p.toml",
    provider: str = 'kind = "offline"\nmodel = "offline-1"',
    title: str = "dag",
    salt: str = "",
) -> Path:
    """Text steps on one provider: {step: (needs, delay_s)}; delay_s is an offline option.

    `salt` goes into every prompt: pipelines with different salts share no cache entry.
    """
    lines = [f'name = "{title}"', "[providers.local]", provider]
    for step, (needs, delay) in steps.items():
        prompt = f"Step {step}{salt}." + "".join(f" {{{{ steps.{n}.output }}}}" for n in needs)
        lines += [
            f"[steps.{step}]",
            f"needs = {json.dumps(needs)}",
            'provider = "local"',
            f"prompt = {json.dumps(prompt)}",
        ]
        if delay:
            lines.append(f"options = {{ delay_s = {delay} }}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


class StderrLines:
    """Collects a Popen's stderr lines in a thread, so a test can wait for one without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20) -> str:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((ln for ln in self.lines if text in ln), None), timeout=timeout
            )
        if not found:
            raise AssertionError(f"no stderr line with {text!r} in {timeout}s: {self.lines}")
        return found

    def text(self, timeout: float = 10) -> str:
        self._thread.join(timeout)
        return "\n".join(self.lines)
