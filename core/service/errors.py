"""One shape for every error the service answers, and the handlers that give it.

Every non-2xx body is `Error`: `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`, the
shape of FastAPI's own validation errors, whatever raised it (a validation error, a `core.errors`
kind, the guard, the router). `loc` names the part of the request that was wrong (`["body", "k"]`,
`["path", "bullet_id"]`; empty when no one field is to blame), `msg` says what in plain words and
`type` is a short name to act on. The status code comes from the error's kind alone: NotFound is 404,
Conflict 409, Invalid 422, whatever route raised it.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from core.errors import AceError, Conflict, Invalid, NotFound

log = logging.getLogger("ace.service")
PARTS = ("body", "path", "query", "header")


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where in the request: 'body', 'path', 'query' or 'header', then "
                                             "the field's path; empty when no one field is to blame")
    msg: str = Field(description="what went wrong, in plain words")
    type: str = Field(description="a short machine-readable name, e.g. 'missing', 'not_found', 'bullet_missing'")


class Error(BaseModel):
    """The body of every error response."""

    detail: list[ErrorItem]


DESCRIPTIONS = {
    401: "Missing or invalid bearer token (only when the service runs with ACE_SERVICE_TOKEN set)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large (ACE_SERVICE_MAX_BODY; imports may be larger)",
    422: "Invalid request: a field is missing, of the wrong type, out of range, holds a NUL character or a lone "
         "surrogate; the body is not UTF-8 JSON, nests too deeply or has a malformed header; or the request breaks "
         "a rule of the playbook (e.g. an op names a bullet that does not exist)",
    503: "The database is busy or unavailable; retry shortly",
}


def responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` documenting `codes` with the one error model; `descriptions` (`e404="..."`)
    say what a code means for this route."""
    return {code: {"model": Error, "description": descriptions.get(f"e{code}", DESCRIPTIONS[code])}
            for code in codes}


def error_json(status: int, msg: str, loc: Sequence[str | int] = (), type: str = "error",
               headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": list(loc), "msg": msg, "type": type}]}, status, headers=headers)


def explain(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 list in the one shape: loc, msg, type (the input is not echoed back), with a plain
    message for a bad id."""
    out = []
    for e in errors:
        loc, kind, msg = list(e.get("loc") or ()), str(e.get("type", "invalid")), str(e.get("msg", ""))
        if loc and kind == "string_pattern_mismatch":
            name = loc[-1]
            got = str(e.get("input"))[:80].encode("ascii", "backslashreplace").decode()
            if name == "playbook_id":
                msg = (f"invalid playbook id {got!r}: use 1-64 letters, digits, '_', '-' or '.', "
                       "starting with a letter or digit")
            elif isinstance(name, int) or name == "bullet_ids" or str(name).endswith("_id"):
                msg = f"invalid id {got!r}: use 1-64 letters, digits, '_', '-' or '.'"
        out.append({"loc": [x if isinstance(x, int) else str(x) for x in loc], "msg": msg, "type": kind})
    return out


def ace_error_json(exc: AceError, status: int) -> JSONResponse:
    """A `core.errors` kind: its message as raised (str() of a KeyError kind would quote it); its `loc`
    when it names one: as given when it starts with a part of the request, else a path into the body
    (`("operations", 2, "bullet_id")`, as `core.playbook` names a field of a delta)."""
    msg = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    loc = [] if not exc.loc else list(exc.loc) if exc.loc[0] in PARTS else ["body", *exc.loc]
    return error_json(status, msg, loc, getattr(exc, "code", "error"))


def install(app: FastAPI) -> None:
    """The handlers that give every error the one shape."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": explain(exc.errors())}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse a body the guard let through: malformed JSON
            return error_json(422, f"invalid JSON: {exc.detail}", ["body"], "json_invalid")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_json(exc.status_code, str(exc.detail), (), kind, headers=exc.headers)

    # One handler per kind. Starlette picks the first class in the exception's MRO that has a handler, so
    # an error of two kinds answers with the one it names first (DeltaConflict(Conflict, DeltaError): 409).
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return ace_error_json(exc, 404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return ace_error_json(exc, 409)

    @app.exception_handler(Invalid)
    async def invalid_request(_: Request, exc: Invalid) -> JSONResponse:
        return ace_error_json(exc, 422)

    @app.exception_handler(OperationalError)
    async def db_busy(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return error_json(503, "database busy or unavailable; retry shortly", (), "unavailable")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_json(500, "internal error", (), "internal")
