"""The ACE service: the playbook core over HTTP, for agents written anywhere.

Agents call `embed_prompt` before inference and `episodes/learn` after a run.
Paths, status codes and envelopes match the reference ACE service
(CakeCrusher/ACE_service) so its web client and integrations work unchanged;
versions, diffs, review of pending deltas, export and import come on top.
Every bullet change goes through `core.playbook` deltas and so becomes a version.
Learning runs on the durable job queue, never in the request.

The status code of an error comes from its type alone (`core.errors`): NotFound
is 404, Conflict 409, Invalid 422, whatever route raised it.
"""

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from core import playbook as P
from core import retrieval, worker
from core.config import Settings, get_settings
from core.errors import AceError, Conflict, Invalid, NotFound
from core.playbook import portability
from core.service.guard import Guard, cors_origins
from core.service.routes import bullets, learning, playbooks, prompts, review
from core.service.schemas import HealthOut
from core.storage.db import get_engine

log = logging.getLogger("ace.service")

VERSION = "0.1.0"


def explain(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 list, with a plain message for a bad playbook id."""
    out = []
    for e in errors:
        e = dict(e)
        if e.get("loc") and e["loc"][-1] == "playbook_id" and e.get("type") == "string_pattern_mismatch":
            e["msg"] = (f"invalid playbook id {str(e.get('input'))[:80]!r}: use 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit")
        out.append(e)
    return out


def error_body(exc: AceError) -> dict[str, str]:
    """The reference service's error envelope. The message as raised: str() of a KeyError kind would quote it."""
    return {"detail": str(exc.args[0]) if len(exc.args) == 1 else str(exc)}


def create_app(start_worker: Optional[bool] = None, settings: Optional[Settings] = None) -> FastAPI:
    """The service; `start_worker` (default: ACE_WORKER_IN_APP) runs learn jobs in this process."""
    settings = settings or get_settings()
    run_worker = settings.worker_in_app if start_worker is None else start_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(get_engine)  # migrate now, not on the first request
        if run_worker:
            worker.start_in_background()  # registers every job kind first
        threading.Thread(target=_warm_indexes, name="ace-warm", daemon=True).start()
        yield

    app = FastAPI(title="ACE Service API", version=VERSION, lifespan=lifespan, description=(
        "Agentic Context Engineering as a service: `embed_prompt` before inference, `episodes/learn` after a run. "
        "Compatible with the reference ACE service; adds versions, diffs, review of pending deltas, export "
        "and import. When ACE_SERVICE_TOKEN is set, send `Authorization: Bearer <token>`."))

    @app.get("/health", response_model=HealthOut, tags=["Service"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": VERSION, "llm_configured": settings.llm_configured,
                "worker": run_worker, "auth": bool(settings.service_token)}

    for module in (prompts, playbooks, bullets, learning, review):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(explain(exc.errors()))}, 422)

    # One handler per kind. Starlette picks the first class in the exception's MRO that has a handler, so
    # an error of two kinds answers with the one it names first (DeltaConflict(Conflict, DeltaError): 409).
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(error_body(exc), 404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(error_body(exc), 409)

    @app.exception_handler(Invalid)
    async def invalid_request(_: Request, exc: Invalid) -> JSONResponse:
        return JSONResponse(error_body(exc), 422)

    @app.exception_handler(OperationalError)
    async def db_busy(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return JSONResponse({"detail": "database busy or unavailable; retry shortly"}, 503)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, 500)

    import_max = max(settings.service_max_body_bytes, portability.MAX_IMPORT_BYTES)
    app.add_middleware(Guard, token=settings.secret("service_token"), max_body=settings.service_max_body_bytes,
                       import_max=import_max)
    app.add_middleware(CORSMiddleware, allow_origins=cors_origins(settings), allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    return app


def _warm_indexes() -> None:
    """Build each playbook's in-memory retrieval index now, not on an agent's first request."""
    for pb in P.list_playbooks():
        try:
            retrieval.warm(pb.id)
        except Exception:  # a cold index only costs the first request some time
            log.warning("could not warm the retrieval index of %s", pb.id, exc_info=True)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True) -> None:
    """`ace serve`: uvicorn on host:port (127.0.0.1 by default; 0.0.0.0 exposes it)."""
    import uvicorn

    if workers > 1:
        uvicorn.run("core.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=access_log)
    else:
        uvicorn.run(create_app(), host=host, port=port, access_log=access_log)
