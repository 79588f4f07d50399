"""The click CLI: thin verbs over steplog's services; `main(argv) -> int` is the entry point."""

from steplog.commands.cli.entry import cli, main

__all__ = ["cli", "main"]
