"""OpenAI-compatible chat client: structured output from any server, strong or weak, within bounds.

Every request carries a token cap (per role, from settings) and every call has one wall-clock
deadline covering its retries, its repair round and a server that trickles bytes; an episode's
time budget (`core.llm.deadline`) shortens it further. Retries honour `Retry-After`, with jitter.

Servers differ: OpenAI honours `json_schema`, many local servers refuse it. We ask for a JSON
schema first and step down to JSON mode, then plain text with the schema in the prompt, only when
a 400 names the response format, schema or grammar; the mode that works is remembered per
endpoint and model in the database (`core.llm.modes`). A reply cut at the cap is recognised as
truncated: the repair round asks for a shorter answer rather than re-sending the cut text.

Every request (success or failure) is written to the `llmcall` table with its messages, reply,
finish reason, tokens, latency and cost; the API key never is, even when a server echoes it.
"""

import json
import random
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Optional, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from core import interrupts
from core.config import Settings, get_settings
from core.llm import modes
from core.llm.calllog import deferred_call_log, log_call
from core.llm.deadline import budget_left
from core.llm.errors import LLMError, LLMNotConfigured, LLMOutputError, LLMTimeout, LLMUnavailable, Spent
from core.llm.replies import describe_invalid, extract_json, parse_reply, wire_schema
from core.llm.transport import DeadlinePassed, NotReached, Reply, ReplyBroken, post_chat, retry_after
from core.redaction import redact, sanitize
from core.storage.models import LLMCall

T = TypeVar("T", bound=BaseModel)
__all__ = ["LLMClient", "role_cap", "LLMError", "LLMNotConfigured", "LLMOutputError", "LLMResult", "LLMTimeout",
           "LLMUnavailable", "Spent", "deferred_call_log", "extract_json", "reset_mode_cache"]

MODES = modes.MODES
REPAIR_ECHO_CHARS = 2000  # of an unusable reply, sent back in the repair round
MAX_BACKOFF_S = 30.0
# a 400 about these is the server refusing the output mode, not the request
_MODE_REFUSAL = re.compile(r"response.?format|json.?schema|json_object|grammar|structured output", re.I)
_CAP_PARAM = re.compile(r"max_(completion_)?tokens", re.I)


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


@lru_cache(maxsize=8)
def _openai_client(base_url: Optional[str], api_key: Optional[str]) -> openai.OpenAI:
    """One SDK client (and its connection pool and TLS context) per endpoint, shared across threads."""
    return openai.OpenAI(base_url=base_url or None, api_key=api_key or "not-needed-for-local-servers",
                         max_retries=0)  # retries are ours, so each request is logged and bounded


@lru_cache(maxsize=64)
def _schema_instruction(schema: type[BaseModel]) -> str:
    return ("Reply with only one JSON object, no prose and no code fences, matching this JSON schema:\n"
            + json.dumps(wire_schema(schema)))


def role_cap(settings: Settings, role: str) -> int:
    """The token cap of a role's replies; code writers (generator, optimizer, any other) get the generator's."""
    s = settings
    caps = {"reflector": s.max_tokens_reflector, "curator": s.max_tokens_curator,
            "reviewer": s.max_tokens_reviewer, "expand": s.max_tokens_expand}
    return caps.get(role, s.max_tokens_generator)


@dataclass
class _Call:
    """One role call in progress: its deadline, cap and what it has spent so far."""

    role: str
    episode_id: Optional[str]
    cap: int
    deadline: float
    seconds: float
    round: int = 1
    spent: Spent = field(default_factory=Spent)


class LLMClient:
    """One client per role use; cheap to create."""

    def __init__(self, settings: Optional[Settings] = None, backoff_base: float = 0.5, log_calls: bool = True):
        self.settings = settings or get_settings()
        self.backoff_base = backoff_base
        self.log_calls = log_calls
        if not self.settings.llm_configured:
            raise LLMNotConfigured()
        self._api_key = self.settings.secret("openai_api_key")
        self._client = _openai_client(self.settings.openai_base_url, self._api_key)
        self._endpoint = modes.endpoint_key(self.settings.openai_base_url)
        # OpenAI's newer models refuse `max_tokens`; most other servers only know it
        self._cap_param = "max_completion_tokens" if not self.settings.openai_base_url else "max_tokens"

    @property
    def model(self) -> str:
        return self.settings.model

    def cap_for(self, role: str) -> int:
        """The token cap of a role's replies."""
        return role_cap(self.settings, role)

    # ------------------------------------------------------------- structured

    def structured(self, role: str, messages: list[dict[str, Any]], schema: type[T],
                   episode_id: Optional[str] = None, *, max_tokens: Optional[int] = None) -> LLMResult[T]:
        """A validated `schema` instance from the model, with one repair round, within the call's deadline."""
        seconds = self.settings.llm_timeout
        left = budget_left()
        if left is not None:
            if left <= 0:
                raise LLMTimeout(f"{role}: the episode's time budget ran out before the call")
            seconds = min(seconds, left)
        call = _Call(role, episode_id, max_tokens or self.cap_for(role), time.monotonic() + seconds, seconds)
        convo = list(messages)
        reply, mode, problem, cut_twice = None, MODES[0], "", False
        for call.round in (1, 2):
            reply, mode = self._answer(call, convo, schema)
            if reply.finish_reason == "length":
                got = reply.completion_tokens or call.cap
                cut_twice = problem.startswith("truncated")
                problem = f"truncated at {got} tokens ({'the cap' if got >= call.cap else 'the server stopped it'})"
                convo = messages + [{"role": "user", "content": (
                    f"Your last answer was cut off at {call.cap} tokens, the most you may write. Answer again, "
                    "much shorter: one complete JSON object, a few items at most in every list, a sentence or "
                    "two in every text field.")}]
                continue
            try:
                value = parse_reply(schema, reply.content)
            except (ValueError, ValidationError, RecursionError, MemoryError) as exc:
                problem = describe_invalid(exc)
                convo = convo + [
                    {"role": "assistant", "content": reply.content[:REPAIR_ECHO_CHARS]},
                    {"role": "user", "content": f"That reply could not be used: {problem}\n"
                                                "Reply again with only the corrected JSON object."},
                ]
                continue
            sp = call.spent
            return LLMResult(value, reply.content, sp.prompt_tokens, sp.completion_tokens, sp.latency_ms,
                             sp.call_ids, mode, convo, sp.calls, sp.cost, reply.finish_reason)
        what = (f"was {problem}" + (", also after asking for a shorter one" if cut_twice else "")
                if problem.startswith("truncated")
                else f"was not valid {schema.__name__} JSON after one repair attempt: {problem}")
        raise LLMOutputError(f"{role}: the model's reply {what}", spent=call.spent,
                             raw=reply.content if reply else None)

    # --------------------------------------------------------------- requests

    def _answer(self, call: _Call, convo: list[dict[str, Any]], schema: type[BaseModel]) -> tuple[Reply, str]:
        """One reply, retrying what is worth retrying and stepping down modes the server refuses."""
        retry = 0
        while True:
            mode = modes.current_mode(self._endpoint, self.model, self.settings.llm_mode_retry_hours)
            sent = _printable(convo if mode == "json_schema" else self._with_instruction(convo, schema))
            kwargs: dict[str, Any] = {"model": self.model, "messages": sent, self._cap_param: call.cap}
            if mode == "json_schema":
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": schema.__name__, "schema": wire_schema(schema), "strict": False}}
            elif mode == "json_object":
                kwargs["response_format"] = {"type": "json_object"}
            t0 = time.perf_counter()
            try:
                reply = post_chat(self._client, kwargs, call.deadline)
            except DeadlinePassed:
                self._log(call, sent, mode, retry, t0, error=f"no reply within the call's {call.seconds:.3g} s")
                raise LLMTimeout(f"{call.role}: no usable reply within {call.seconds:.3g} s "
                                 f"({call.spent.calls} request(s))", spent=call.spent) from None
            except openai.APIStatusError as exc:
                status, why = exc.status_code, self._describe(exc)
                self._log(call, sent, mode, retry, t0, error=why)
                if status in (400, 422) and _CAP_PARAM.search(why) and "max_completion_tokens" in why \
                        and self._cap_param == "max_tokens":
                    self._cap_param = "max_completion_tokens"
                    continue
                if status in (400, 422) and mode != "plain" and _MODE_REFUSAL.search(why):
                    if modes.remember_refusal(self._endpoint, self.model, mode) is not None:
                        continue
                if status in (401, 403, 404):
                    raise LLMUnavailable(f"{call.role}: the model server refused us: {why}", spent=call.spent) \
                        from None
                if status in (408, 409, 429) or status >= 500:
                    retry = self._wait(call, exc, retry, why)
                    continue
                raise LLMError(f"{call.role}: the model server refused the request: {why}", spent=call.spent) \
                    from None
            except (openai.APIConnectionError, NotReached) as exc:
                why = self._describe(exc)
                self._log(call, sent, mode, retry, t0, error=why)
                try:
                    retry = self._wait(call, exc, retry, why)
                except LLMError as final:  # out of retries or of time: nobody is there
                    raise LLMUnavailable(f"{call.role}: no model server answers at {self._endpoint}: {why}",
                                         spent=final.spent) from None
                continue
            except ReplyBroken as exc:  # the connection broke mid-reply, or the body was no chat completion
                why = self._describe(exc)
                self._log(call, sent, mode, retry, t0, error=why)
                retry = self._wait(call, exc, retry, why)
                continue
            self._log(call, sent, mode, retry, t0, reply=reply)
            if mode == MODES[0]:
                modes.remember_success(self._endpoint, self.model, mode)
            return reply, mode

    def _wait(self, call: _Call, exc: Exception, retry: int, why: str) -> int:
        """Sleep before the next retry (the server's Retry-After, else backoff, plus jitter), within the deadline."""
        retry += 1
        if retry > self.settings.llm_max_retries:
            raise LLMError(f"{call.role}: the model server failed {retry} times; last error: {why}",
                           spent=call.spent)
        asked = retry_after(exc)
        wait = asked if asked is not None else min(self.backoff_base * 2 ** (retry - 1), MAX_BACKOFF_S)
        wait *= 1 + random.uniform(0, 0.25)
        if time.monotonic() + wait >= call.deadline:
            raise LLMTimeout(f"{call.role}: the model server asked to wait {wait:.1f} s, past the call's "
                             f"{call.seconds:.0f} s deadline; last error: {why}", spent=call.spent)
        interrupts.sleep(wait)  # a cancel cuts the backoff short
        return retry

    # ---------------------------------------------------------------- logging

    def _log(self, call: _Call, sent: list[dict[str, Any]], mode: str, retry: int, t0: float,
             reply: Optional[Reply] = None, error: Optional[str] = None) -> None:
        ms = (time.perf_counter() - t0) * 1000
        p, c = (reply.prompt_tokens, reply.completion_tokens) if reply else (0, 0)
        cost = (p * self.settings.price_input + c * self.settings.price_output) / 1e6
        call.spent.add(Spent(p, c, ms, 1, cost))
        if not self.log_calls:
            return
        cid = log_call(LLMCall(
            episode_id=call.episode_id, role=call.role, model=self.model, messages=sent,
            response=reply.content if reply else None, prompt_tokens=p, completion_tokens=c, latency_ms=ms,
            mode=mode, error=error, finish_reason=reply.finish_reason if reply else None, max_tokens=call.cap,
            retry=retry, round=call.round, cost=cost))
        if cid is not None:
            call.spent.call_ids.append(cid)

    def _describe(self, exc: Exception) -> str:
        status = getattr(exc, "status_code", None)
        msg = re.sub(r"^Error code: \d+ - ", "", str(getattr(exc, "message", "") or exc))
        msg = redact(msg, extra=(self._api_key,))[:300]  # also this client's own key, whatever settings it got
        return f"HTTP {status}: {msg}" if status else f"{type(exc).__name__}: {msg}"

    @staticmethod
    def _with_instruction(messages: list[dict[str, Any]], schema: type[BaseModel]) -> list[dict[str, Any]]:
        out = [dict(m) for m in messages]
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{_schema_instruction(schema)}"
        else:
            out.insert(0, {"role": "system", "content": _schema_instruction(schema)})
        return out


def _printable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages safe to encode: an earlier reply's lone surrogate or NUL (fed into this prompt) replaced."""
    return [{**m, "content": sanitize(m["content"])} if isinstance(m.get("content"), str) else m for m in messages]


def reset_mode_cache() -> None:
    """Forget learned server modes and pooled clients (tests start servers on reused ports)."""
    modes.forget()
    _openai_client.cache_clear()
