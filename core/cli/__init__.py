"""The `ace` command: `core.cli.main.main` parses the command line and dispatches to one module per command group."""
