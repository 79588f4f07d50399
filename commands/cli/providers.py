"""`steplog providers ...`: look at the providers a pipeline configures."""

from __future__ import annotations

from pathlib import Path

import click

from steplog.commands.cli.group import cli, console, echo_json, json_option


@cli.group()
def providers() -> None:
    """Reach the LLM providers a pipeline configures."""


@providers.command("check")
@click.argument("pipeline", type=click.Path(path_type=Path))
@json_option
def check(pipeline: Path, as_json: bool) -> None:
    """Reach every provider of PIPELINE; exit 1 if any cannot be used.

    Example: OPENAI_API_KEY=... steplog providers check examples/factory/pipeline.toml
    """
    from steplog.commands.providers_check import check_providers

    results = check_providers(pipeline)
    if as_json:
        echo_json([r.as_dict() for r in results])
    else:
        from steplog.commands.cli.render import print_provider_checks

        print_provider_checks(console(), results)
    if not all(r.ok for r in results):
        raise SystemExit(1)
