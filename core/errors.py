"""Errors whose kind other code acts on: the service maps each kind to one status code.

Raise these (or a subclass) where a caller's request cannot be met; anything else
that escapes is a bug and answers 500. `loc` (optional) says which field of the
request was wrong, as a path into it (`("operations", 2, "bullet_id")`); `code` is
a short machine-readable name of the kind.
"""

from collections.abc import Sequence


class AceError(Exception):
    """An error the product raises on purpose, with a message fit to show a user."""

    code = "error"

    def __init__(self, *args: object, loc: Sequence[str | int] = ()) -> None:
        super().__init__(*args)
        self.loc: tuple[str | int, ...] = tuple(loc)


class NotFound(AceError, LookupError):
    """What was asked for does not exist (HTTP 404)."""

    code = "not_found"


class Conflict(AceError):
    """The request is valid but clashes with the current state, e.g. a job that is still running (HTTP 409)."""

    code = "conflict"


class Invalid(AceError, ValueError):
    """The request itself is wrong: a bad id, empty content, an unknown op type (HTTP 422)."""

    code = "invalid"


class Missing(NotFound, KeyError):
    """A row looked up by its id does not exist; a KeyError too, for callers that caught one before errors had kinds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
