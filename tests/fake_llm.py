"""A fake OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies.

The product's real `openai` client talks to it over HTTP, so what is tested is
the code that runs against a real server. Replies are queued per test:

    fake.reply({"code": ...})          # a JSON body as the message content
    fake.reply("plain text")
    fake.reply(Status(503))            # an HTTP error
    fake.reply(Delay(2.0, {...}))      # a slow answer
    fake.reply(lambda req: {...})      # computed from the request

`fake.requests` records every request body received, for assertions on what
the client really sent (system message, response_format, ...).
"""

import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


@dataclass
class Status:
    code: int
    message: str = "scripted error"


@dataclass
class Delay:
    seconds: float
    reply: Any


Reply = Any


@dataclass
class FakeLLM:
    reject_json_schema: bool = False
    default: Optional[Callable[[dict[str, Any]], Reply]] = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    _queue: deque = field(default_factory=deque)
    _server: Optional[ThreadingHTTPServer] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ scripting

    def reply(self, *replies: Reply) -> "FakeLLM":
        with self._lock:
            self._queue.extend(replies)
        return self

    @property
    def pending(self) -> int:
        return len(self._queue)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("_path", "").endswith("/chat/completions")]

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeLLM":
        fake = self

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
                    return self._send(400, {"error": {"message": "invalid JSON body"}})
                body["_path"] = self.path
                body["_auth"] = self.headers.get("Authorization", "")
                with fake._lock:
                    fake.requests.append(body)
                if self.path.endswith("/embeddings"):
                    return self._send(200, fake_embeddings(body))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                rf = body.get("response_format") or {}
                if fake.reject_json_schema and rf.get("type") == "json_schema":
                    return self._send(400, {"error": {"message": "response_format json_schema is not supported",
                                                      "type": "invalid_request_error"}})
                with fake._lock:
                    reply = fake._queue.popleft() if fake._queue else None
                if reply is None and fake.default is not None:
                    reply = fake.default(body)
                if reply is None:
                    return self._send(500, {"error": {"message": "fake LLM: no scripted reply left"}})
                while True:
                    if callable(reply) and not isinstance(reply, (Status, Delay)):
                        reply = reply(body)
                    elif isinstance(reply, Delay):
                        time.sleep(reply.seconds)
                        reply = reply.reply
                    else:
                        break
                if isinstance(reply, Status):
                    return self._send(reply.code, {"error": {"message": reply.message}})
                content = reply if isinstance(reply, str) else json.dumps(reply)
                if body.get("stream"):
                    return self._stream(body, content)
                return self._send(200, completion(body, content))

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout test): nothing to answer

            def _stream(self, body: dict[str, Any], content: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                base = completion(body, content)
                for i in range(0, len(content), 16):
                    chunk = {"id": base["id"], "object": "chat.completion.chunk", "created": base["created"],
                             "model": base["model"],
                             "choices": [{"index": 0, "delta": {"content": content[i:i + 16]}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                end = {"id": base["id"], "object": "chat.completion.chunk", "created": base["created"],
                       "model": base["model"], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": base["usage"]}
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    prompt = sum(_count_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
    out = _count_tokens(content)
    return {
        "id": f"chatcmpl-fake{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
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
