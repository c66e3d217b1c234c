"""One HTTP request to the model server, bounded by a wall-clock deadline.

httpx's timeouts bound each read, not the call: a server that trickles a byte a second never trips
them. So the reply is read as a stream and a watchdog closes the connection when the deadline
passes, whatever the server is doing. The protocol stays the ordinary non-streaming one, so the
reply still carries `usage` on every server.
"""

import email.utils
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import openai


class DeadlinePassed(Exception):
    """The deadline passed while waiting for, or reading, the reply."""


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
    timed_out = threading.Event()
    try:
        with client.chat.completions.with_streaming_response.create(**kwargs, timeout=left) as resp:
            def abort() -> None:
                timed_out.set()
                resp.http_response.close()

            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), abort)
            watchdog.daemon = True
            watchdog.start()
            try:
                body = b"".join(_chunks(resp.iter_bytes(), deadline))
            finally:
                watchdog.cancel()
    except openai.APITimeoutError:
        raise DeadlinePassed() from None
    except DeadlinePassed:
        raise
    except Exception:
        if timed_out.is_set() or time.monotonic() >= deadline:
            raise DeadlinePassed() from None
        raise
    return _parse(body)


def _chunks(chunks: Any, deadline: float) -> Any:
    for chunk in chunks:
        if time.monotonic() >= deadline:
            raise DeadlinePassed()
        yield chunk


def _parse(body: bytes) -> Reply:
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError(f"the server's reply is not JSON: {body[:200]!r}") from None
    choices = data.get("choices") or [] if isinstance(data, dict) else []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    usage = data.get("usage") or {} if isinstance(data, dict) else {}
    return Reply(content=str(message.get("content") or ""), finish_reason=first.get("finish_reason"),
                 prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0))


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
