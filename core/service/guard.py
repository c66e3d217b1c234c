"""The ASGI guard (bearer token, body size and body content, before any route or parser runs) and the CORS origins."""

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Optional

from anyio import to_thread

from core.config import Settings
from core.service import body as B
from core.service.errors import error_json

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_CORS = ("http://localhost:3000", "http://localhost:8080", "http://127.0.0.1:3000", "http://127.0.0.1:8080")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
THREAD_ABOVE = 256 * 1024  # bodies larger than this are checked off the event loop

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class Guard:
    """Bearer token, body size and body content checked before any route or parser runs.

    Plain ASGI rather than BaseHTTPMiddleware: it costs microseconds per request, and a rejected
    body is never read past the limit. A JSON body (and any playbook import) is read whole first
    and refused when it nests too deep, is not UTF-8, or holds a NUL or a lone surrogate in a string
    (`core.service.body`): 422 naming the field, before FastAPI's parser sees it.
    """

    def __init__(self, app: ASGIApp, token: Optional[str], max_body: int, import_max: int) -> None:
        self.app, self.max_body, self.import_max = app, max_body, import_max
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path, method = scope.get("path", ""), scope.get("method")
        if self.expected is not None and method != "OPTIONS" and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if given[:7].lower() == b"bearer ":
                given = b"Bearer " + given[7:].strip()
            if not hmac.compare_digest(given, self.expected):
                return await error_json(
                    401, "Missing or invalid bearer token: send 'Authorization: Bearer <ACE_SERVICE_TOKEN>'",
                    ["header", "authorization"], "unauthorized",
                    headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        importing = path.endswith("/import")
        limit = self.import_max if importing else self.max_body
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await error_json(422, "Invalid Content-Length header", ["header", "content-length"],
                                        "invalid_header")(scope, receive, send)
            if n > limit:
                return await self._too_large(scope, receive, send, limit)
        inspect = method in BODY_METHODS and (importing or _is_json(headers.get(b"content-type", b"")))
        if not inspect and (length is not None or method not in BODY_METHODS | {"DELETE"}):
            return await self.app(scope, receive, send)
        buffered: list[Any] = []  # count the body as it comes (chunked: no Content-Length to trust)
        total = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            total += len(msg.get("body", b""))
            if total > limit:
                return await self._too_large(scope, receive, send, limit)
            buffered.append(msg)
            if not msg.get("more_body"):
                break
        if inspect:
            data = b"".join(m.get("body", b"") for m in buffered)
            check = B.check_text if importing else B.check_json
            problem = await to_thread.run_sync(check, data) if len(data) > THREAD_ABOVE else check(data)
            if problem is not None:
                return await error_json(422, problem.msg, problem.loc, problem.type)(scope, receive, send)

        async def replay() -> Any:
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Any, send: Any, limit: int) -> None:
        await error_json(413, f"Request body too large: the limit is {limit:,} bytes (ACE_SERVICE_MAX_BODY)",
                         ["body"], "too_large")(scope, receive, send)


def cors_origins(settings: Settings) -> list[str]:
    """ACE_SERVICE_CORS_ORIGINS, comma-separated; the local web client's usual ports when unset."""
    items = [o.strip() for o in settings.service_cors_origins.split(",") if o.strip()]
    return items or list(DEFAULT_CORS)
