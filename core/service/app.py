"""The ACE service: the playbook core over HTTP, for agents written anywhere.

Agents call `embed_prompt` before inference and `episodes/learn` after a run.
Paths and success envelopes match the reference ACE service
(CakeCrusher/ACE_service) so its web client and integrations work unchanged;
versions, diffs, review of pending deltas, export and import come on top.
Every bullet change goes through `core.playbook` deltas and so becomes a version.
Learning runs on the durable job queue, never in the request.

Every error has one shape (`core.service.errors.Error`) and its status code comes
from its type alone (`core.errors`): NotFound is 404, Conflict 409, Invalid 422,
whatever route raised it. Each route documents every code it can answer.
"""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from core import playbook as P
from core import retrieval, worker
from core.config import Settings, get_settings
from core.playbook import portability
from core.redaction import install_logging
from core.service import errors
from core.service.errors import responses
from core.service.guard import OPEN_PATHS, Guard, cors_origins
from core.service.methods import Methods, app_paths
from core.service.routes import bullets, learning, playbooks, prompts, review
from core.service.schemas import HealthOut
from core.storage.db import get_engine

log = logging.getLogger("ace.service")

VERSION = "0.1.0"


def create_app(start_worker: Optional[bool] = None, settings: Optional[Settings] = None) -> FastAPI:
    """The service; `start_worker` (default: ACE_WORKER_IN_APP) runs learn jobs in this process."""
    install_logging()  # this process's log lines, uvicorn's too, are redacted; no query strings logged
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
        "and import. When ACE_SERVICE_TOKEN is set, send `Authorization: Bearer <token>`. Every error answers "
        "with one shape, `Error`: `{\"detail\": [{\"loc\": [...], \"msg\": \"...\", \"type\": \"...\"}]}`; "
        "`loc` names the part of the request at fault. Text holding NUL or a lone surrogate, JSON nested more "
        "than 32 levels and loose types (`k: true`, `k: \"5\"`) are refused with 422."))

    @app.get("/health", response_model=HealthOut, tags=["Service"], responses=responses(413))
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": VERSION, "llm_configured": settings.llm_configured,
                "worker": run_worker, "auth": bool(settings.service_token)}

    # Every route may answer these, whatever it does: the guard (token, body size and content) and the database.
    common = responses(401, 413, 422, 503)
    for module in (prompts, playbooks, bullets, learning, review):
        app.include_router(module.router, responses=common)
    errors.install(app)

    if settings.service_token:
        declare_bearer(app)

    # Outermost last: CORS (preflights), then Methods (OPTIONS, HEAD, 405), then the Guard, then the routes.
    import_max = max(settings.service_max_body_bytes, portability.MAX_IMPORT_BYTES)
    app.add_middleware(Guard, token=settings.secret("service_token"), max_body=settings.service_max_body_bytes,
                       import_max=import_max)
    app.add_middleware(Methods, paths=lambda: app_paths(app))
    app.add_middleware(CORSMiddleware, allow_origins=cors_origins(settings), allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    return app


def declare_bearer(app: FastAPI) -> None:
    """With ACE_SERVICE_TOKEN set, the OpenAPI document says so: a bearer scheme on every operation but
    the open ones (/health and the docs), so clients and the docs' Authorize button know."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = plain()
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "description": "ACE_SERVICE_TOKEN"}
        for path, item in doc.get("paths", {}).items():
            if path not in OPEN_PATHS:
                for op in item.values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _warm_indexes() -> None:
    """Build each playbook's in-memory retrieval index now, not on an agent's first request."""
    for pb in P.list_playbooks():
        try:
            retrieval.warm(pb.id)
        except Exception:  # a cold index only costs the first request some time
            log.warning("could not warm the retrieval index of %s", pb.id, exc_info=True)


class NoQueryString(logging.Filter):
    """uvicorn's access log without query strings: a probe's `?token=...` is never written down."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration, with `NoQueryString` on its access log."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["no_query_string"] = {"()": f"{__name__}.NoQueryString"}
    config["handlers"]["access"].setdefault("filters", []).append("no_query_string")
    return config


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True) -> None:
    """`ace serve`: uvicorn on host:port (127.0.0.1 by default; 0.0.0.0 exposes it). The access log has
    no query strings."""
    import uvicorn

    if workers > 1:
        uvicorn.run("core.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=access_log, log_config=log_config())
    else:
        uvicorn.run(create_app(), host=host, port=port, access_log=access_log, log_config=log_config())
