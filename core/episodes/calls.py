"""What a role call leaves in the trace and the counters, whether its reply was usable or not, and which
bullet ids it may honestly claim.

A reply that could not be used (`LLMError` other than `LLMUnavailable`) still spent tokens, time and
money: `exc.spent` says how much, and it counts like a good reply's. Bullet ids a model names are
checked against the ids in its prompt; the others are invented and dropped.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from pydantic import BaseModel

from core.episodes.events import ClaimedIds, LLMFields
from core.llm.client import LLMResult
from core.llm.deadline import budget_left
from core.llm.errors import LLMError, LLMUnavailable, Spent
from core.playbook.lines import ID_RE

MAX_LISTED = 10  # invented ids listed in a payload (all are counted)
MAX_ID_CHARS = 80  # a model once "named" whole sentences as ids
MAX_WHY_CHARS = 600  # why a reply was unusable, as the next attempt's prompt says it
OUT_OF_TIME = "the episode's time budget ran out"


def out_of_time() -> bool:
    """The episode's time budget is spent: start no new attempt and skip learning."""
    left = budget_left()
    return left is not None and left <= 0


def unusable(exc: BaseException) -> bool:
    """One unusable answer (costs an attempt, never the episode); `LLMUnavailable` means nothing can run."""
    return isinstance(exc, LLMError) and not isinstance(exc, LLMUnavailable)


def unusable_feedback(why: str) -> str:
    """What the next attempt is told about an attempt whose reply could not be used (nothing ran)."""
    why = why if len(why) <= MAX_WHY_CHARS else why[:MAX_WHY_CHARS - 1] + "…"
    return (f"No code ran: your reply could not be used ({why}). Reply again in the requested format, "
            "shorter if it was cut off, with the complete code.")


T = TypeVar("T", bound=BaseModel)


def call_role(payload: dict[str, Any], totals: dict[str, float], call: Callable[[], LLMResult[T]],
              unavailable_ends: bool = True) -> tuple[Optional[LLMResult[T]], Optional[LLMError]]:
    """Make one role call inside a trace step; what it spent counts whether its reply was usable or not.

    A reply that cannot be used fills the step's `payload` with why (and the raw reply) and comes back
    as (None, error). `LLMUnavailable` (no model reachable) is raised unless `unavailable_ends` is False,
    for callers that already have a verdict to keep.
    """
    try:
        out = call()
    except LLMError as exc:
        add_spent(totals, exc.spent)
        payload.update(failure_fields(exc))
        if unavailable_ends and not unusable(exc):
            raise
        return None, exc
    add_spent(totals, out.spent)
    return out, None


def result_fields(out: LLMResult[Any]) -> LLMFields:
    """A usable reply's call record."""
    return LLMFields(messages=out.messages, response=out.raw, prompt_tokens=out.prompt_tokens,
                     completion_tokens=out.completion_tokens, latency_ms=out.latency_ms, llm_mode=out.mode,
                     call_ids=list(out.call_ids), calls=out.calls, cost=out.cost, finish_reason=out.finish_reason)


def failure_fields(exc: LLMError) -> LLMFields:
    """An unusable reply's call record: why, the last raw reply, and what the calls spent."""
    s = exc.spent
    return LLMFields(response=exc.raw, error=str(exc), error_type=type(exc).__name__, prompt_tokens=s.prompt_tokens,
                     completion_tokens=s.completion_tokens, latency_ms=s.latency_ms, call_ids=list(s.call_ids),
                     calls=s.calls, cost=s.cost)


def add_spent(totals: dict[str, float], spent: Spent) -> None:
    """Count a call's tokens, time and cost in an episode's running totals."""
    totals["tokens"] = totals.get("tokens", 0) + spent.tokens
    totals["llm_ms"] = totals.get("llm_ms", 0.0) + spent.latency_ms
    totals["cost"] = totals.get("cost", 0.0) + spent.cost


def ids_in_prompt(candidates: Iterable[str], *texts: Optional[str],
                  messages: Optional[Sequence[Mapping[str, Any]]] = None) -> set[str]:
    """The `candidates` (bullets rendered for a role) whose bullet line really is in what it was sent:
    `messages` when the role reports them, else the given `texts`. A role that trims its prompt to a
    budget may leave some out."""
    parts = [str(m.get("content") or "") for m in messages] if messages else [t or "" for t in texts]
    seen = {i for part in parts for i in ID_RE.findall(part)}
    return {c for c in candidates if c in seen}


def split_claimed(claimed: Iterable[str], allowed: set[str]) -> tuple[list[str], list[str]]:
    """(kept, invented): the claimed ids that were in the prompt, each once, and the others."""
    kept: list[str] = []
    invented: list[str] = []
    for raw in claimed:
        i = str(raw).strip()
        if i in allowed:
            if i not in kept:
                kept.append(i)
        else:
            invented.append(i)
    return kept, invented


def claimed_fields(invented: list[str]) -> ClaimedIds:
    """The invented ids as a payload counts and lists them (a model once named whole sentences)."""
    if not invented:
        return ClaimedIds(invented_ids=0)
    return ClaimedIds(invented_ids=len(invented), invented=[clip_id(i) for i in invented[:MAX_LISTED]])


def clip_id(i: str) -> str:
    return i if len(i) <= MAX_ID_CHARS else i[:MAX_ID_CHARS - 1] + "…"
