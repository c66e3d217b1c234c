"""Exit codes and the one way a command reports failure, so every `ace` command ends the same way.

0 success, 1 the task failed its tests, 2 bad usage or input, 3 the work could
not run (no model configured, sandbox unavailable, ...), 130 interrupted.
"""

import sys

from core.redaction import sanitize

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # what a shell reports after Ctrl+C


def fail(message: str, code: int) -> int:
    """Tell the user on stderr, prefixed so they know who spoke, secrets redacted; returns `code` for
    `return fail(...)`."""
    print(f"ace: {sanitize(message)}", file=sys.stderr)
    return code
