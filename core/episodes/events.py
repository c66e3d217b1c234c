"""The trace's event kinds and their payloads, shared by the loop that writes them and the CLI and UI that read them.

An event is stored as a row (`Event`: kind, attempt, duration, payload JSON); these
types say what each kind's payload holds. Payloads are plain dicts at run time
(TypedDicts cost nothing on the hot path); readers cast a payload to its kind's
type (`cast(GeneratePayload, event.payload)`) so a misspelt key is a type error. Every payload of the
review workflow also carries the acting `role`.
"""

from collections.abc import Callable
from typing import Any, Literal, Optional, TypedDict

EventKind = Literal["route", "generate", "output", "execute", "evaluate", "review", "optimize", "reflect", "curate",
                    "apply", "error"]
StreamName = Literal["stdout", "stderr"]
ApplyStatus = Literal["empty", "applied", "pending", "skipped"]


class LLMFields(TypedDict, total=False):
    """What every step that called a model records about the call.

    A call whose reply could not be used has `error` (why) and `error_type` (the `LLMError` class), and
    `response` holds the last raw reply (or None); its tokens, latency, calls and cost still count.
    """

    messages: list[dict[str, Any]]
    response: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    llm_mode: str
    call_ids: list[int]
    calls: int  # requests made: retries, refused modes and the repair round included
    cost: float
    finish_reason: Optional[str]
    error: str
    error_type: str
    role: str


class ClaimedIds(TypedDict, total=False):
    """Bullet ids a model named that were not in its prompt: dropped, never shown as used nor tagged."""

    invented_ids: int  # how many
    invented: list[str]  # the first few, clipped


class RetrievedBullet(TypedDict, total=False):
    id: str
    score: float
    scores: dict[str, float]


class RoutePayload(TypedDict, total=False):
    playbook_id: str
    reason: Optional[str]
    review_mode: Optional[str]
    backend: Optional[str]
    model: Optional[str]
    mode: str
    workflow: str
    playbooks: dict[str, str]
    used_bullets: list[str]
    role: str


class GeneratePayload(LLMFields, ClaimedIds, total=False):
    """A Generator's (or the Optimizer's) code and the bullets it was shown and used (among those shown).

    With `error` the reply could not be used: no code ran, and the attempt failed with that feedback."""

    code: str
    reasoning: str
    bullet_ids: list[str]
    retrieved: list[RetrievedBullet]


class ReviewPayload(LLMFields, ClaimedIds, total=False):
    needs_optimization: bool
    forced: bool
    issues: list[str]
    suggestions: str
    reasoning: str
    bullet_ids: list[str]
    passed: bool
    retrieved: list[RetrievedBullet]


class OutputPayload(TypedDict, total=False):
    """Output streamed while code runs; the execute event carries all of a short run's output instead."""

    stream: StreamName
    text: str
    role: str


class ExecutePayload(TypedDict, total=False):
    code: str
    language: str
    isolation: str
    execution: dict[str, Any]  # `core.sandbox.Execution` as JSON (logs, results, error, exit_code, timed_out)
    role: str


class EvaluatePayload(TypedDict, total=False):
    passed: bool
    total: int
    failed: list[str]
    error: Optional[str]
    feedback: str
    role: str


class ReflectPayload(LLMFields, ClaimedIds, total=False):
    """`invented_ids`: bullet tags on ids that were not among the bullets used, dropped."""

    reflection: dict[str, Any]  # `core.roles.ReflectorOutput` as JSON, its bullet tags the kept ones


class DroppedOp(TypedDict):
    """An operation a model proposed that did not reach the delta, and why."""

    op: Any  # the op as proposed (a dict; whatever the model sent when it did not parse)
    reason: str


class CuratePayload(LLMFields, total=False):
    curation: dict[str, Any]  # `core.roles.CuratorOutput` as JSON: reasoning and the operations kept
    dropped: list[DroppedOp]  # invalid ops, ids not in the Curator's prompt, second TAGs on one bullet


class ApplyPayload(TypedDict, total=False):
    """How learning ended: a delta applied or pending, an empty one ("empty": nothing to apply), or
    "skipped" with the `reason` (a role's reply was unusable, no code ran, the time budget ran out)."""

    delta_id: Optional[str]
    review_mode: str
    operations: int
    dropped: int
    status: ApplyStatus
    reason: str
    version: Optional[int]
    results: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    role: str


class ErrorPayload(TypedDict, total=False):
    step: str
    message: str
    type: str
    role: str



class TraceEvent(TypedDict):
    """An event as a live listener (`on_event`) receives it, before or without a database row."""

    kind: EventKind
    attempt: Optional[int]
    duration_ms: Optional[float]
    payload: dict[str, Any]


EventSink = Callable[[TraceEvent], None]

