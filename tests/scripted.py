"""Scripted role replies for the fake LLM server, in the shapes the roles ask for, and scripted roles
that answer them in process (no HTTP), unusable answers included."""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from core.llm.client import LLMResult
from core.llm.errors import LLMError, LLMOutputError, LLMTimeout, LLMUnavailable, Spent
from core.roles import CuratorOutput, GeneratorOutput, OptimizerOutput, ReflectorOutput, ReviewerOutput


def gen(code: str, bullet_ids: Optional[list[str]] = None, language: str = "python") -> dict[str, Any]:
    return {"reasoning": "scripted", "bullet_ids": bullet_ids or [], "code": code, "language": language}


def refl(insight: str = "check edge cases", tags: Optional[list[tuple[str, str]]] = None) -> dict[str, Any]:
    return {"reasoning": "scripted reflection", "error_identification": "the run failed" if tags is None else "",
            "root_cause_analysis": "scripted cause", "correct_approach": "scripted approach",
            "key_insight": insight, "bullet_tags": [{"id": i, "tag": t} for i, t in (tags or [])]}


def cur(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"reasoning": "scripted curation", "operations": list(ops)}


def add(content: str, section: str = "pitfalls") -> dict[str, Any]:
    return {"type": "ADD", "section": section, "content": content, "justification": "seen in a run",
            "evidence": "execution output"}


def unhelpful_model(req: dict[str, Any]) -> dict[str, Any]:
    """A fake server's answer to any role (read from the system prompt): code that prints the wrong thing,
    a reflection, an empty delta. Enough to run benchmarks and re-runs end to end."""
    system = req["messages"][0]["content"]
    if "reviewer of code executions" in system:
        return refl()
    if "curator" in system:
        return cur()
    return gen("print('no idea')")


# ------------------------------------------------------------------ scripted roles, no HTTP
#
# Roles that answer from a script in this process, for cases about what the loop does with an answer
# (an unusable one included) rather than how the client got it. Each script entry is a reply dict (in
# the shapes above), a `Fail` (the call raises), or a `Slow` (either, after a pause). Every answer says
# what it spent, so the tests can check the counters to the token.

PROMPT_TOKENS, COMPLETION_TOKENS, LATENCY_MS, COST = 100, 50, 10.0, 0.001  # what each good answer spent


@dataclass
class Fail:
    """A call with no usable answer: raises `error(message, spent=..., raw=...)`."""

    error: type[LLMError] = LLMOutputError
    message: str = "the reply was cut off at the token cap (truncated at 64 tokens)"
    raw: Optional[str] = '{"reasoning": "let me think", "bullet_ids": ["1", "12", "21", "23", "'
    spent: Spent = field(default_factory=lambda: Spent(prompt_tokens=120, completion_tokens=64, latency_ms=250.0,
                                                       calls=2, cost=0.002))

    def raise_it(self, role: str) -> None:
        s = self.spent
        raise self.error(f"{role}: {self.message}",
                         spent=Spent(s.prompt_tokens, s.completion_tokens, s.latency_ms, s.calls, s.cost,
                                     list(s.call_ids)),
                         raw=self.raw)


def truncated(message: str = "the reply was cut off at the token cap (truncated at 64 tokens)") -> Fail:
    return Fail(LLMOutputError, message)


def timed_out() -> Fail:
    return Fail(LLMTimeout, "no usable reply within 30 s (3 requests)", raw=None,
                spent=Spent(prompt_tokens=0, completion_tokens=0, latency_ms=30_000.0, calls=3))


def unreachable() -> Fail:
    return Fail(LLMUnavailable, "no model server answers at http://127.0.0.1:9/v1: connection refused", raw=None,
                spent=Spent(latency_ms=5.0, calls=1))


@dataclass
class Slow:
    seconds: float
    reply: Any


Scripted = Union[dict[str, Any], Fail, Slow]


class _Script:
    """Answers one role's calls in order and remembers what each call was given."""

    def __init__(self, role: str, model: type[Any], replies: list[Scripted]):
        self.role, self.model, self.replies = role, model, list(replies)
        self.calls: list[dict[str, Any]] = []

    def answer(self, prompt_text: str, **given: Any) -> LLMResult[Any]:
        self.calls.append(given)
        if not self.replies:
            raise AssertionError(f"scripted {self.role}: no reply left for call {len(self.calls)}")
        reply = self.replies.pop(0)
        if isinstance(reply, Slow):
            time.sleep(reply.seconds)
            reply = reply.reply
        if isinstance(reply, Fail):
            reply.raise_it(self.role)
        value = self.model.model_validate(reply)
        messages = [{"role": "system", "content": prompt_text}, {"role": "user", "content": str(given.get("task"))}]
        return LLMResult(value, raw=json.dumps(reply), prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS,
                         latency_ms=LATENCY_MS, call_ids=[], mode="scripted", messages=messages, calls=1, cost=COST,
                         finish_reason="stop")

    @property
    def left(self) -> int:
        return len(self.replies)


class ScriptedGenerator(_Script):
    def __init__(self, replies: list[Scripted]):
        super().__init__("generator", GeneratorOutput, replies)

    def generate(self, task: str, language: str, playbook_text: str, previous: list[Any],
                 episode_id: Optional[str] = None) -> LLMResult[Any]:
        return self.answer(playbook_text, task=task, playbook_text=playbook_text, previous=list(previous))


class ScriptedReflector(_Script):
    def __init__(self, replies: list[Scripted]):
        super().__init__("reflector", ReflectorOutput, replies)

    def reflect(self, task: str, attempts: list[Any], used_bullets: str, ground_truth: Optional[str],
                episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[Any]:
        return self.answer(used_bullets, task=task, attempts=list(attempts), used_bullets=used_bullets)


class ScriptedCurator(_Script):
    def __init__(self, replies: list[Scripted]):
        super().__init__("curator", CuratorOutput, replies)

    def curate(self, task: str, reflection: Any, playbook_text: str, outcome: str,
               episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[Any]:
        return self.answer(playbook_text, task=task, playbook_text=playbook_text, outcome=outcome)


class ScriptedReviewer(_Script):
    def __init__(self, replies: list[Scripted]):
        super().__init__("reviewer", ReviewerOutput, replies)

    def review(self, task: str, language: str, code: str, feedback: str, playbook_text: str,
               episode_id: Optional[str] = None) -> LLMResult[Any]:
        return self.answer(playbook_text, task=task, code=code, feedback=feedback)


class ScriptedOptimizer(_Script):
    def __init__(self, replies: list[Scripted]):
        super().__init__("optimizer", OptimizerOutput, replies)

    def optimize(self, task: str, language: str, code: str, feedback: str, review: Any, playbook_text: str,
                 episode_id: Optional[str] = None) -> LLMResult[Any]:
        return self.answer(playbook_text, task=task, code=code, feedback=feedback)


def scripted_roles(generator: Sequence[Scripted] = (), reflector: Sequence[Scripted] = (),
                   curator: Sequence[Scripted] = (), reviewer: Optional[Sequence[Scripted]] = None,
                   optimizer: Optional[Sequence[Scripted]] = None) -> Any:
    """Roles for `run_episode(roles=...)`: the single loop's three, or with a reviewer and an optimizer
    the review workflow's five (`ReviewRoles`)."""
    from core.episodes.review import ReviewRoles
    from core.episodes.spec import Roles

    g, r, c = ScriptedGenerator(list(generator)), ScriptedReflector(list(reflector)), ScriptedCurator(list(curator))
    if reviewer is None and optimizer is None:
        return Roles(g, r, c)
    return ReviewRoles(g, r, c, ScriptedReviewer(list(reviewer or ())), ScriptedOptimizer(list(optimizer or ())))
