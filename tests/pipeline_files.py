"""Small pipeline files for the process tests (concurrency, signals)."""

from __future__ import annotations

import json
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
