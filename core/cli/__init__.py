"""The `ace` command: `main` (in `commands`) parses the command line and dispatches to one module per command group."""

from core.cli.commands import main

__all__ = ["main"]
