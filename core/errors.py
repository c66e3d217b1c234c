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


def plain_message(exc: BaseException) -> str:
    """What went wrong in plain words, naming the field: a pydantic ValidationError becomes "content: must
    not be empty" instead of "1 validation error for OpIn ... visit https://errors.pydantic.dev/..."."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc") or () if not isinstance(x, int)) or "input"
            msg = str(e.get("msg", "is not valid"))
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            parts.append(f"{loc}: {msg}")
        return "; ".join(parts) or "the input is not valid"
    text = str(exc).strip()
    return text or type(exc).__name__
