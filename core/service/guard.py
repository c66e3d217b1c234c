"""The ASGI guard (bearer token and body size, before any route or parser runs) and the CORS origins."""

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Optional

from fastapi.responses import JSONResponse

from core.config import Settings

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_CORS = ("http://localhost:3000", "http://localhost:8080", "http://127.0.0.1:3000", "http://127.0.0.1:8080")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Guard:
    """Bearer token and body size checked before any route or parser runs.

    Plain ASGI rather than BaseHTTPMiddleware: it costs microseconds per
    request, and a rejected body is never read past the limit.
    """

    def __init__(self, app: ASGIApp, token: Optional[str], max_body: int, import_max: int) -> None:
        self.app, self.max_body, self.import_max = app, max_body, import_max
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.expected is not None and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if given[:7].lower() == b"bearer ":
                given = b"Bearer " + given[7:].strip()
            if not hmac.compare_digest(given, self.expected):
                return await JSONResponse(
                    {"detail": "Missing or invalid bearer token: send 'Authorization: Bearer <ACE_SERVICE_TOKEN>'"},
                    401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        limit = self.import_max if path.endswith("/import") else self.max_body
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await JSONResponse({"detail": "Invalid Content-Length header"}, 400)(scope, receive, send)
            if n > limit:
                return await self._too_large(scope, receive, send, limit)
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            return await self.app(scope, receive, send)
        buffered: list[Any] = []  # chunked body: count it as it comes
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

        async def replay() -> Any:
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Any, send: Any, limit: int) -> None:
        await JSONResponse({"detail": f"Request body too large: the limit is {limit:,} bytes "
                                      "(ACE_SERVICE_MAX_BODY)"}, 413)(scope, receive, send)


def cors_origins(settings: Settings) -> list[str]:
    """ACE_SERVICE_CORS_ORIGINS, comma-separated; the local web client's usual ports when unset."""
    items = [o.strip() for o in settings.service_cors_origins.split(",") if o.strip()]
    return items or list(DEFAULT_CORS)
