"""One HTTP request to the model server, bounded by a wall-clock deadline.

httpx's timeouts bound each read, not the call: a server that trickles a byte a second, or a header
line every half second, never trips them. So the request runs in its own thread and the caller waits
for it no longer than the deadline; when the deadline passes, the connection's socket is shut down
(waking a read blocked in the other thread) and the caller moves on. The protocol stays the ordinary
non-streaming one, so the reply still carries `usage` on every server.
"""

import email.utils
import json
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Optional

import openai

from core.interrupts import Interrupted, wait_until

CONNECT_S = 10.0  # a server that has not accepted the connection by then is not there


class DeadlinePassed(Exception):
    """The deadline passed while waiting for, or reading, the reply."""


class NotReached(Exception):
    """The server could not be connected to in time (nothing listening, a host that never answers)."""


class ReplyBroken(Exception):
    """The connection broke, or the reply was not a chat completion; the message says which, never
    quoting the body (a server may echo the request's credentials in it)."""


@dataclass
class Reply:
    content: str
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int


def post_chat(client: openai.OpenAI, kwargs: dict[str, Any], deadline: float) -> Reply:
    """Send one chat completion request and read the reply before `deadline` (time.monotonic())."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed()
    done: Future[bytes] = Future()
    held: dict[str, Any] = {}
    worker = threading.Thread(target=_send, args=(client, kwargs, left, deadline, held, done),
                              name="llm-request", daemon=True)
    worker.start()
    ready = threading.Event()
    done.add_done_callback(lambda _f: ready.set())
    try:
        replied = wait_until(ready, deadline - time.monotonic())  # the reply, the deadline or a cancel
    except Interrupted:
        _shut(held)
        raise
    if not replied:
        _shut(held)
        raise DeadlinePassed()
    return _parse(done.result())


def _send(client: openai.OpenAI, kwargs: dict[str, Any], left: float, deadline: float, held: dict[str, Any],
          done: "Future[bytes]") -> None:
    t0 = time.monotonic()
    try:
        timeout = openai.Timeout(left, connect=min(CONNECT_S, left))
        with client.chat.completions.with_streaming_response.create(**kwargs, timeout=timeout) as resp:
            held["response"] = resp.http_response
            chunks = []
            for chunk in resp.iter_bytes():
                if time.monotonic() >= deadline:
                    raise DeadlinePassed()
                chunks.append(chunk)
        done.set_result(b"".join(chunks))
    except openai.APITimeoutError:
        # before the deadline: the connect timeout fired, so nobody is there; after it, the reply was late
        late = time.monotonic() - t0 >= left - 0.05 or "response" in held
        done.set_exception(DeadlinePassed() if late else NotReached("no answer to the connection attempt"))
    except (openai.APIError, DeadlinePassed) as exc:
        done.set_exception(exc)
    except Exception as exc:  # the connection broke mid-reply (or was shut at the deadline)
        done.set_exception(DeadlinePassed() if time.monotonic() >= deadline
                           else ReplyBroken(f"the connection broke during the reply ({type(exc).__name__})"))


def _shut(held: dict[str, Any]) -> None:
    """Wake the request's thread if it is blocked reading: shut the socket down under it."""
    response = held.get("response")
    if response is None:
        return  # still connecting or waiting for headers: the thread ends at its own timeout
    try:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        else:
            response.close()
    except Exception:  # already closed, or a transport without a socket: nothing left to wake
        pass


def _parse(body: bytes) -> Reply:
    try:
        data = json.loads(body)
        first = data["choices"][0]
        message = first.get("message") or {}
        usage = data.get("usage") or {}
        return Reply(content=str(message.get("content") or ""), finish_reason=first.get("finish_reason"),
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise ReplyBroken(f"the server's reply is not a chat completion ({len(body):,} bytes)") from None


def retry_after(exc: Exception) -> Optional[float]:
    """Seconds the server asked us to wait (`retry-after-ms`, `retry-after` in seconds or as a date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None
