"""The `ace` command."""
