"""A fake OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies.

The product's real `openai` client talks to it over HTTP, so what is tested is
the code that runs against a real server. Replies are queued per test, one per
chat request, and taken in order; `fake.default(request)` answers when the
queue is empty (otherwise: a 500 saying no scripted reply is left).

Well-behaved replies:

    fake.reply({"code": ...})          # a dict is JSON-encoded as the message content
    fake.reply("plain text")           # a string is the content as is
    fake.reply(lambda req: {...})      # computed from the request body (may return any reply below)

Misbehaving replies (a weak, slow or broken model or server):

    fake.reply("Sure! Here is my analysis of the problem ...")       # prose instead of JSON
    fake.reply("Here you go:\n```python\ndef f(x):\n    return x\n```")  # fenced code in plain mode
    fake.reply({"operations": [{"type": "ADD", "section": None, "content": None}]})  # nulls in required fields
    fake.reply({"reasoning": "...", "bullet_ids": ["1", "12", "bullet about sorting"]})  # invented bullet ids
    fake.reply(Endless('{"reasoning": "x", "bullet_ids": [', '"1", '))
                                       # a model looping inside a JSON array: `item` repeated until the
                                       # request's cap (or `server_cap` when uncapped), finish_reason "length"
    fake.reply(Truncated('{"code": "def f('))    # content as given, finish_reason "length"
    fake.reply(Finish("...", "content_filter"))  # any finish_reason
    fake.reply(Status(503))                      # an HTTP error with an OpenAI-style error body
    fake.reply(Status(429, "slow down", {"Retry-After": "1"}))  # ... with response headers
    fake.reply(Delay(2.0, {...}))                # nothing for 2 s, then the reply
    fake.reply(Trickle({...}, every_s=0.1, chunk=8))  # headers at once (Content-Length set), then the body
                                       # 8 bytes every 0.1 s: a server that defeats per-read timeouts
    fake.reply(Stall(5.0, {...}))      # headers and half the body, 5 s of silence, then the rest

Wrappers nest (`Trickle(Endless(...), 0.01)`, `Delay(1, Status(500))`, a callable returning `Truncated`).
Delay, Trickle and Stall stop quietly when the client hangs up or the fake is stopped (`fake.abandoned`
counts those responses).

Token caps are honoured like a real server: a chat request's cap is `max_completion_tokens` or
`max_tokens` (the smaller when both are sent); content longer than the cap (tokens counted as ~4
characters each, `_count_tokens`) is cut to it and answered with finish_reason "length" and
completion_tokens == the cap. Without a cap, `server_cap` (100k tokens) plays the server's own limit.
`usage` is always computed: prompt tokens from the messages, completion tokens from the content sent.

Server switches: `reject_json_schema` / `reject_json_object` answer 400 naming the refused
response_format; `reject_uncapped` answers 400 "max_tokens is required" to a request without a cap.

Inspection: `fake.requests` records every request body received (with `_path` and `_auth` added), for
assertions on what the client really sent (system message, response_format, ...); `fake.chat_requests()`
only the chat completions; `fake.caps` the cap of each chat request (None: uncapped); `fake.uncapped` the
chat requests without a cap; `fake.assert_all_capped()` fails naming them.
"""

import hashlib
import json
import math
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union


@dataclass
class Status:
    """An HTTP error: `code`, an OpenAI-style error body carrying `message`, and extra response headers."""
    code: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delay:
    """Nothing for `seconds`, then `reply`."""
    seconds: float
    reply: Any


@dataclass
class Endless:
    """`prefix` then `item` repeated forever, cut at the request's cap (finish_reason "length").
    `suffix` is what would close the text; the loop never gets there, as with a real looping model."""
    prefix: str
    item: str
    suffix: str = ""


@dataclass
class Finish:
    """`content` (any reply) with the given finish_reason, unless the cap cuts it first ("length")."""
    content: Any
    reason: str


@dataclass
class Truncated:
    """`content` (any reply) as is, with finish_reason "length": cut off by the server's own limit."""
    content: Any


@dataclass
class Trickle:
    """A 200 whose headers (Content-Length included) come at once and whose body comes `chunk` bytes
    every `every_s` seconds: about ceil(len(body) / chunk) * every_s in all. `content` is any reply."""
    content: Any
    every_s: float
    chunk: int = 1


@dataclass
class Stall:
    """Headers and the first half of the body, `seconds` of silence, then the rest."""
    seconds: float
    reply: Any


Reply = Any
Pacing = Union[Trickle, Stall, None]

_WRAPPERS = (Status, Delay, Endless, Finish, Truncated, Trickle, Stall)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error",
                429: "rate_limit_exceeded"}


def request_cap(body: dict[str, Any]) -> Optional[int]:
    """The token cap a chat request carries: `max_completion_tokens` or `max_tokens`, the smaller of both."""
    caps = [body.get(k) for k in ("max_completion_tokens", "max_tokens")]
    present = [int(c) for c in caps if c is not None]
    return min(present) if present else None


def error_body(code: int, message: str, param: Optional[str] = None) -> dict[str, Any]:
    """The error body an OpenAI server answers with."""
    kind = _ERROR_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": "rate_limit_exceeded" if code == 429 else None}}


@dataclass
class FakeLLM:
    reject_json_schema: bool = False
    reject_json_object: bool = False
    reject_uncapped: bool = False
    server_cap: int = 100_000  # the server's own limit on a reply without a cap (its context, say)
    default: Optional[Callable[[dict[str, Any]], Reply]] = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    abandoned: int = 0  # responses given up because the client hung up (or the fake stopped) mid-way
    _queue: deque = field(default_factory=deque)
    _server: Optional[ThreadingHTTPServer] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------ scripting

    def reply(self, *replies: Reply) -> "FakeLLM":
        with self._lock:
            self._queue.extend(replies)
        return self

    @property
    def pending(self) -> int:
        return len(self._queue)

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("_path", "").endswith("/chat/completions")]

    @property
    def caps(self) -> list[Optional[int]]:
        """The token cap of every chat request so far, in order; None for a request without one."""
        return [request_cap(r) for r in self.chat_requests()]

    @property
    def uncapped(self) -> list[dict[str, Any]]:
        """The chat requests that carried no token cap."""
        return [r for r in self.chat_requests() if request_cap(r) is None]

    def assert_all_capped(self) -> None:
        """Fail if any chat request went out without `max_tokens` / `max_completion_tokens`."""
        bad = self.uncapped
        if bad:
            firsts = [_first_words(r) for r in bad]
            raise AssertionError(f"{len(bad)} of {len(self.chat_requests())} chat requests carried no token "
                                 f"cap; their first messages: {firsts}")

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeLLM":
        fake = self
        self._stopped.clear()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, error_body(400, "invalid JSON body"))
                body["_path"] = self.path
                body["_auth"] = self.headers.get("Authorization", "")
                with fake._lock:
                    fake.requests.append(body)
                if self.path.endswith("/embeddings"):
                    return self._send(200, fake_embeddings(body))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, error_body(404, f"no route {self.path}"))
                refusal = fake._refusal(body)
                if refusal is not None:
                    return self._send(400, refusal)
                with fake._lock:
                    reply = fake._queue.popleft() if fake._queue else None
                if reply is None and fake.default is not None:
                    reply = fake.default(body)
                if reply is None:
                    return self._send(500, error_body(500, "fake LLM: no scripted reply left"))
                self._answer(body, reply)

            def _answer(self, body: dict[str, Any], reply: Reply) -> None:
                pacing: Pacing = None
                finish: Optional[str] = None
                while True:
                    if callable(reply) and not isinstance(reply, _WRAPPERS):
                        reply = reply(body)
                    elif isinstance(reply, Delay):
                        if not self._pause(reply.seconds):
                            return self._abandon()
                        reply = reply.reply
                    elif isinstance(reply, (Trickle, Stall)):
                        pacing = reply
                        reply = reply.content if isinstance(reply, Trickle) else reply.reply
                    elif isinstance(reply, Truncated):
                        finish, reply = "length", reply.content
                    elif isinstance(reply, Finish):
                        finish, reply = reply.reason, reply.content
                    else:
                        break
                if isinstance(reply, Status):
                    return self._send(reply.code, error_body(reply.code, reply.message), reply.headers, pacing)
                cap = request_cap(body)
                limit = cap if cap is not None else fake.server_cap
                if isinstance(reply, Endless):
                    content = endless_text(reply, limit)
                else:
                    content = reply if isinstance(reply, str) else json.dumps(reply)
                if _count_tokens(content) > limit:
                    content, finish = content[:max(limit, 0) * 4], "length"
                payload = completion(body, content, finish or "stop")
                if body.get("stream"):
                    return self._stream(payload, pacing)
                return self._send(200, payload, pacing=pacing)

            def _send(self, code: int, payload: dict[str, Any], headers: Optional[dict[str, str]] = None,
                      pacing: Pacing = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self._write_paced(data, pacing)

            def _stream(self, payload: dict[str, Any], pacing: Pacing) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                content = payload["choices"][0]["message"]["content"]
                head = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
                events = [head | {"choices": [{"index": 0, "delta": {"content": content[i:i + 16]},
                                               "finish_reason": None}]} for i in range(0, len(content), 16)]
                events.append(head | {"choices": [{"index": 0, "delta": {},
                                                   "finish_reason": payload["choices"][0]["finish_reason"]}],
                                      "usage": payload["usage"]})
                data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self.close_connection = True
                self._write_paced(data.encode(), pacing)

            def _write_paced(self, data: bytes, pacing: Pacing) -> None:
                """End the headers and write `data`: at once, trickled or stalled half-way."""
                try:
                    self.end_headers()
                    if isinstance(pacing, Trickle):
                        step = max(1, pacing.chunk)
                        for i in range(0, len(data), step):
                            if not self._pause(pacing.every_s):
                                return self._abandon()
                            self.wfile.write(data[i:i + step])
                    elif isinstance(pacing, Stall):
                        half = len(data) // 2
                        self.wfile.write(data[:half])
                        if not self._pause(pacing.seconds):
                            return self._abandon()
                        self.wfile.write(data[half:])
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self._abandon()  # the client gave up first (a timeout test): nothing to answer

            def _pause(self, seconds: float) -> bool:
                """Wait `seconds`; False as soon as the client hangs up or the fake is stopped."""
                deadline = time.monotonic() + seconds
                watch = True
                while True:
                    left = deadline - time.monotonic()
                    if fake._stopped.is_set():
                        return False
                    if left <= 0:
                        return True
                    if not watch:
                        time.sleep(min(left, 0.05))
                        continue
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    if readable:
                        try:
                            peek = self.connection.recv(1, socket.MSG_PEEK)
                        except OSError:
                            return False
                        if not peek:
                            return False  # end of stream: the client closed its side
                        watch = False  # the client sent something unexpected; stop watching, keep time

            def _abandon(self) -> None:
                self.close_connection = True
                with fake._lock:
                    fake.abandoned += 1

        server = self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # stop() within 50 ms
        return self

    def stop(self) -> None:
        """Stop serving; safe to call twice, from two threads at once (a test's timer and its teardown)."""
        self._stopped.set()  # slow replies in flight give up
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # ------------------------------------------------------------ internals

    def _refusal(self, body: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The 400 body a server configured to refuse this request would answer, or None."""
        kind = (body.get("response_format") or {}).get("type")
        if self.reject_json_schema and kind == "json_schema":
            return error_body(400, "response_format json_schema is not supported", "response_format")
        if self.reject_json_object and kind == "json_object":
            return error_body(400, "response_format json_object is not supported", "response_format")
        if self.reject_uncapped and request_cap(body) is None:
            return error_body(400, "max_tokens is required", "max_tokens")
        cap = request_cap(body)
        if cap is not None and cap < 1:
            return error_body(400, f"max_tokens must be at least 1, got {cap}", "max_tokens")
        return None


def _first_words(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    return _message_text(messages[0])[:60]


def _message_text(message: dict[str, Any]) -> str:
    """The text of one chat message: a string, or the text parts of a list of parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def endless_text(reply: Endless, limit: int) -> str:
    """`reply.prefix` and enough `reply.item`s to run past `limit` tokens (the caller cuts it)."""
    need = 4 * (limit + 1) - len(reply.prefix)
    repeats = max(1, math.ceil(need / max(1, len(reply.item))) + 1)
    return reply.prefix + reply.item * repeats + reply.suffix


def completion(body: dict[str, Any], content: str, finish_reason: str = "stop") -> dict[str, Any]:
    prompt = sum(_count_tokens(_message_text(m)) for m in body.get("messages", []))
    out = _count_tokens(content)
    return {
        "id": f"chatcmpl-fake{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
    }


def hashed_vector(text: str, dims: int = 64) -> list[float]:
    """A deterministic bag-of-words vector: texts sharing words point the same way."""
    vec = [0.0] * dims
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = int(hashlib.sha256(word.encode()).hexdigest(), 16)
        vec[h % dims] += 1.0 if (h >> 8) % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def fake_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = [{"object": "embedding", "index": i, "embedding": hashed_vector(str(t))} for i, t in enumerate(items)]
    return {"object": "list", "data": data, "model": body.get("model", "fake-embed"),
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}}
