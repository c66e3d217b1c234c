"""OpenAI-compatible chat client with structured output, retries and a call log.

Servers differ: OpenAI honours `json_schema`, many local servers reject it or
ignore it. We ask for a JSON schema first, fall back to JSON mode and then to
plain text with the schema in the prompt, validate with pydantic, and allow one
repair round. The mode that works is remembered per endpoint and model.

Every call (success or failure) is written to the `llmcall` table with its
messages, response, tokens and latency. The API key is never logged.
"""

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, Optional, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from core.config import Settings, get_settings
from core.llm.errors import LLMError, LLMNotConfigured, LLMOutputError, LLMTimeout, LLMUnavailable, Spent
from core.storage.db import write_session
from core.storage.models import LLMCall

T = TypeVar("T", bound=BaseModel)
__all__ = ["LLMClient", "LLMError", "LLMNotConfigured", "LLMOutputError", "LLMResult", "LLMTimeout",
           "LLMUnavailable", "Spent", "deferred_call_log", "extract_json", "reset_mode_cache"]
MODES = ("json_schema", "json_object", "plain")
_mode_cache: dict[tuple[str, str], str] = {}
_mode_lock = threading.Lock()


_deferred = threading.local()


@contextmanager
def deferred_call_log() -> Iterator[list[LLMCall]]:
    """Collect this thread's call-log rows instead of writing each in its own transaction.

    The caller writes the yielded rows with its own commit; if the block
    raises, they are written here so failed calls are never lost.
    """
    rows: list[LLMCall] = []
    outer = getattr(_deferred, "rows", None)
    _deferred.rows = rows
    try:
        yield rows
    except BaseException:
        if rows:
            with write_session() as s:
                s.add_all(rows)
            rows.clear()
        raise
    finally:
        _deferred.rows = outer


@dataclass
class LLMResult(Generic[T]):
    value: T
    raw: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    call_ids: list[int]
    mode: str
    messages: list[dict[str, Any]]
    calls: int = 1  # requests made, retries, refused modes and the repair round included
    cost: float = 0.0
    finish_reason: Optional[str] = None

    @property
    def spent(self) -> Spent:
        return Spent(self.prompt_tokens, self.completion_tokens, self.latency_ms, self.calls, self.cost,
                     list(self.call_ids))


def extract_json(text: str) -> Any:
    """The JSON object in a reply, tolerating code fences and chatter around it."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    return json.loads(candidate[start:end + 1])


@lru_cache(maxsize=64)
def _schema(schema: type[BaseModel]) -> dict[str, Any]:
    return schema.model_json_schema()


@lru_cache(maxsize=8)
def _openai_client(base_url: Optional[str], api_key: Optional[str], timeout: float) -> openai.OpenAI:
    """One SDK client (and its connection pool and TLS context) per endpoint, shared across threads."""
    return openai.OpenAI(base_url=base_url or None, api_key=api_key or "not-needed-for-local-servers",
                         timeout=timeout, max_retries=0)  # retries are ours, so each attempt is logged


def _schema_instruction(schema: type[BaseModel]) -> str:
    return ("Reply with only one JSON object, no prose and no code fences, matching this JSON schema:\n"
            + json.dumps(_schema(schema)))


class LLMClient:
    """One client per role use; cheap to create."""

    def __init__(self, settings: Optional[Settings] = None, backoff_base: float = 0.5, log_calls: bool = True):
        self.settings = settings or get_settings()
        self.backoff_base = backoff_base
        self.log_calls = log_calls
        if not self.settings.llm_configured:
            raise LLMNotConfigured()
        self._client = _openai_client(self.settings.openai_base_url, self.settings.secret("openai_api_key"),
                                      self.settings.llm_timeout)
        self._key = (self.settings.openai_base_url or "openai", self.settings.model)

    @property
    def model(self) -> str:
        return self.settings.model

    # ---------------------------------------------------------------- logging

    def _log(self, role: str, episode_id: Optional[str], messages: list[dict[str, Any]], response: Optional[str],
             usage: tuple[int, int], latency_ms: float, mode: str, error: Optional[str]) -> Optional[int]:
        if not self.log_calls:
            return None
        row = LLMCall(episode_id=episode_id, role=role, model=self.model, messages=messages, response=response,
                      prompt_tokens=usage[0], completion_tokens=usage[1], latency_ms=latency_ms, mode=mode,
                      error=error)
        buffer = getattr(_deferred, "rows", None)
        if buffer is not None:  # written by whoever opened the buffer, in its own transaction
            buffer.append(row)
            return None
        with write_session() as s:
            s.add(row)
            s.flush()
            return row.id

    # --------------------------------------------------------------- one call

    def _create(self, messages: list[dict[str, Any]], schema: type[BaseModel], mode: str) -> Any:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if mode == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.__name__, "schema": _schema(schema), "strict": False}}
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return self._client.chat.completions.create(**kwargs)

    def _call(self, role: str, episode_id: Optional[str], messages: list[dict[str, Any]],
              schema: type[BaseModel], call_ids: list[int]) -> tuple[str, tuple[int, int], float, str]:
        """One answer, retrying transient failures and stepping down modes the server refuses."""
        attempt = 0
        while True:
            with _mode_lock:
                mode = _mode_cache.get(self._key, "json_schema")
            sent = messages if mode == "json_schema" else self._with_instruction(messages, schema)
            t0 = time.perf_counter()
            try:
                resp = self._create(sent, schema, mode)
            except openai.BadRequestError as exc:
                ms = (time.perf_counter() - t0) * 1000
                self._append(call_ids, self._log(role, episode_id, sent, None, (0, 0), ms, mode, _describe(exc)))
                nxt = MODES.index(mode) + 1
                if nxt >= len(MODES):
                    raise LLMError(f"{role}: the model server refused the request: {_describe(exc)}") from None
                with _mode_lock:
                    _mode_cache[self._key] = MODES[nxt]
                continue
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                ms = (time.perf_counter() - t0) * 1000
                self._append(call_ids, self._log(role, episode_id, sent, None, (0, 0), ms, mode, _describe(exc)))
                attempt += 1
                if attempt > self.settings.llm_max_retries:
                    raise LLMError(f"{role}: the model server failed {attempt} times; "
                                   f"last error: {_describe(exc)}") from None
                time.sleep(min(self.backoff_base * 2 ** (attempt - 1), 20.0))
                continue
            except openai.APIStatusError as exc:
                ms = (time.perf_counter() - t0) * 1000
                self._append(call_ids, self._log(role, episode_id, sent, None, (0, 0), ms, mode, _describe(exc)))
                raise LLMError(f"{role}: the model server answered with an error: {_describe(exc)}") from None
            ms = (time.perf_counter() - t0) * 1000
            content = (resp.choices[0].message.content or "") if resp.choices else ""
            usage = (getattr(resp.usage, "prompt_tokens", 0) or 0, getattr(resp.usage, "completion_tokens", 0) or 0)
            self._append(call_ids, self._log(role, episode_id, sent, content, usage, ms, mode, None))
            return content, usage, ms, mode

    @staticmethod
    def _append(ids: list[int], cid: Optional[int]) -> None:
        if cid is not None:
            ids.append(cid)

    @staticmethod
    def _with_instruction(messages: list[dict[str, Any]], schema: type[BaseModel]) -> list[dict[str, Any]]:
        out = [dict(m) for m in messages]
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{_schema_instruction(schema)}"
        else:
            out.insert(0, {"role": "system", "content": _schema_instruction(schema)})
        return out

    # ------------------------------------------------------------- structured

    def structured(self, role: str, messages: list[dict[str, Any]], schema: type[T],
                   episode_id: Optional[str] = None) -> LLMResult[T]:
        """A validated `schema` instance from the model, with one repair round."""
        call_ids: list[int] = []
        total = [0, 0, 0.0]
        convo = list(messages)
        last_error = ""
        for _round in range(2):
            raw, usage, ms, mode = self._call(role, episode_id, convo, schema, call_ids)
            total[0] += usage[0]
            total[1] += usage[1]
            total[2] += ms
            try:
                value = schema.model_validate(extract_json(raw))
                return LLMResult(value, raw, int(total[0]), int(total[1]), float(total[2]), call_ids, mode, convo)
            except (ValueError, ValidationError) as exc:
                last_error = _short(exc)
                convo = convo + [
                    {"role": "assistant", "content": raw},
                    {"role": "user", "content": f"That reply could not be used: {last_error}\n"
                                                f"Reply again with only the corrected JSON object."},
                ]
        raise LLMOutputError(f"{role}: the model's reply was not valid {schema.__name__} JSON "
                             f"after one repair attempt: {last_error}")


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    msg = str(getattr(exc, "message", "") or exc)
    return f"HTTP {status}: {msg[:300]}" if status else f"{type(exc).__name__}: {msg[:300]}"


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]
        return "; ".join(parts)
    return str(exc)[:300]


def reset_mode_cache() -> None:
    """Forget learned server modes and pooled clients (tests start servers on reused ports)."""
    with _mode_lock:
        _mode_cache.clear()
    _openai_client.cache_clear()
