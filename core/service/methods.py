"""OPTIONS, HEAD and 405 for every path, each naming all the methods the path has.

FastAPI makes one route per method, and Starlette answers a method a path lacks with the `Allow` of
the first route whose path matched: `OPTIONS /playbooks` got 405 with `Allow: GET` though POST is
there too. This middleware knows every route's methods by path: `OPTIONS` answers 204 with `Allow`
listing all of them (CORS preflights never get here: CORSMiddleware answers them first), `HEAD` is
served as a GET without its body, and a method no route of the path takes is 405 with the same `Allow`.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any, Optional

from fastapi import FastAPI

from core.service.errors import error_json
from core.service.guard import ASGIApp, Scope

Table = list[tuple["re.Pattern[str]", frozenset[str]]]
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def app_paths(app: FastAPI) -> dict[str, set[str]]:
    """Every path template of the app with its methods: the OpenAPI document's (what clients are told),
    and the plain routes outside it (the docs pages)."""
    paths: dict[str, set[str]] = {}
    for path, item in app.openapi().get("paths", {}).items():
        paths.setdefault(path, set()).update(m.upper() for m in item if m in HTTP_METHODS)
    for r in app.routes:
        path, methods = getattr(r, "path", None), getattr(r, "methods", None)
        if isinstance(path, str) and methods:
            paths.setdefault(path, set()).update(methods)
    return paths


def _regex(template: str) -> "re.Pattern[str]":
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


class Methods:
    def __init__(self, app: ASGIApp, paths: Callable[[], Mapping[str, set[str]]]) -> None:
        self.app, self.paths = app, paths
        self._table: Optional[Table] = None

    def table(self) -> Table:
        """Each path template with all its methods; the most specific first (fewest parameters, then the
        longest), so `/bullets/retrieve` wins over `/bullets/{bullet_id}`. Built on first use: every
        route is included by then."""
        if self._table is None:
            paths = self.paths()
            order = sorted(paths, key=lambda p: (p.count("{"), -len(p)))
            self._table = [(_regex(p), frozenset(paths[p])) for p in order]
        return self._table

    @staticmethod
    def allow(methods: frozenset[str]) -> str:
        extra = {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
        return ", ".join(sorted(methods | extra))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        matched = [methods for regex, methods in self.table() if regex.match(path)]
        if not matched:
            return await self.app(scope, receive, send)  # no such path: the router's 404
        if any(method in m for m in matched):
            return await self.app(scope, receive, send)
        allow = self.allow(matched[0])
        if method == "OPTIONS":
            return await send_empty(send, 204, allow)
        if method == "HEAD" and any("GET" in m for m in matched):
            return await self.app({**scope, "method": "GET"}, receive, _without_body(send))
        return await error_json(405, f"Method Not Allowed: {method} {path} is not served; this path takes {allow}",
                                [], "method_not_allowed", headers={"Allow": allow})(scope, receive, send)


async def send_empty(send: Any, status: int, allow: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"allow", allow.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _without_body(send: Any) -> Any:
    """`send` for a HEAD answered as a GET: the headers (Content-Length included) as they are, no body."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return wrapped
