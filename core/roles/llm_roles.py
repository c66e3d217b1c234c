"""The LLM-backed roles: each fills its templates from core/roles/prompts/ and asks the model for
its JSON shape (`core.roles.schemas`).

Every request is bounded both ways: the messages fit `settings.prompt_max_tokens` (the variable parts,
playbook, code, feedback, reflection, are cut to fit: `core.roles.budget`), and the reply has the role's
token cap from settings, passed explicitly so a role renamed for a workflow keeps its kind's cap.
"""

import json
from pathlib import Path
from string import Template
from typing import Any, ClassVar, Optional, TypeVar

from core.config import Settings, get_settings
from core.llm.client import LLMClient, LLMResult, role_cap
from core.llm.replies import wire_schema
from core.playbook.lines import ID_RE
from core.roles import wire
from core.roles.budget import Messages, fit, messages_budget
from core.roles.parsing import FENCE_TAG
from core.roles.schemas import (
    Attempt,
    CuratorOutput,
    GeneratorOutput,
    OptimizerOutput,
    ReflectorOutput,
    ReviewerOutput,
    RoleOutput,
    clip,
)

PROMPTS = Path(__file__).resolve().parent / "prompts"
MAX_OPS_ASKED = 5  # the prompt asks for fewer operations than the wire schema allows
MAX_ISSUES_ASKED = 5
MAX_IDS_LISTED = 30  # ids the Reflector is told it may tag
T = TypeVar("T", bound=RoleOutput)


def prompt(name: str, **values: Any) -> str:
    return Template((PROMPTS / f"{name}.md").read_text()).safe_substitute(**values).strip()


def attempt_text(number: int, passed: bool, code: str, feedback: str) -> str:
    verdict = "PASSED" if passed else "FAILED"
    shown = f"```\n{code}\n```" if code.strip() else "(no code: the model's reply could not be used)"
    return f"--- attempt {number} ({verdict}) ---\nCode:\n{shown}\nExecution feedback:\n{feedback}"


def bullet_ids_in(text: str) -> list[str]:
    """Ids of the bullet lines in a text, first seen first."""
    return list(dict.fromkeys(ID_RE.findall(text or "")))


class LLMRole:
    """What every model-backed role shares: its client, its settings, its caps."""

    kind: ClassVar[str] = ""  # generator, reflector, curator, reviewer or optimizer: which caps apply

    def __init__(self, llm: LLMClient, role: Optional[str] = None, settings: Optional[Settings] = None):
        self.llm, self.role = llm, role or self.kind
        self.settings: Settings = settings or getattr(llm, "settings", None) or get_settings()

    @property
    def max_tokens(self) -> int:
        return role_cap(self.settings, self.kind)

    def budget(self, schema: type[RoleOutput]) -> int:
        return messages_budget(self.settings.prompt_max_tokens, wire_schema(schema))

    def ask(self, messages: Messages, schema: type[T], episode_id: Optional[str]) -> LLMResult[T]:
        return self.llm.structured(self.role, messages, schema, episode_id, max_tokens=self.max_tokens)


class LLMGenerator(LLMRole):
    kind = "generator"

    def messages(self, task: str, language: str, playbook_text: str, previous: list[Attempt]) -> Messages:
        last = previous[-1] if previous else None
        parts = {"playbook": playbook_text, "task": task, "code": clip(last.code) if last else "",
                 "feedback": clip(last.feedback) if last else ""}

        def build(p: dict[str, str]) -> Messages:
            extra = ""
            if last is not None:
                extra = ("\nYour previous attempt failed. Fix it using the real execution feedback below.\n"
                         + attempt_text(last.number, last.passed, p["code"], p["feedback"]))
            return [
                {"role": "system", "content": prompt("generator", language=language, playbook=p["playbook"],
                                                     fence=FENCE_TAG.get(language, ""),
                                                     max_ids=wire.MAX_BULLET_IDS)},
                {"role": "user", "content": prompt("generator_user", task=p["task"], extra=extra)},
            ]

        schema = GeneratorOutput.for_language(language)
        return fit(build, parts, self.budget(schema), by_lines=("playbook",))

    def generate(self, task: str, language: str, playbook_text: str, previous: list[Attempt],
                 episode_id: Optional[str] = None) -> LLMResult[GeneratorOutput]:
        return self.ask(self.messages(task, language, playbook_text, previous),
                        GeneratorOutput.for_language(language), episode_id)


class LLMReflector(LLMRole):
    kind = "reflector"

    def messages(self, task: str, attempts: list[Attempt], used_bullets: str, ground_truth: Optional[str],
                 instructions: str = "") -> Messages:
        ids = bullet_ids_in(used_bullets)
        allowed = ", ".join(ids[:MAX_IDS_LISTED]) + (" ..." if len(ids) > MAX_IDS_LISTED else "")
        parts = {"task": task, "used_bullets": used_bullets or "(none)", "instructions": instructions,
                 "ground_truth": clip(ground_truth or "")}
        for a in attempts:
            parts[f"code {a.number}"], parts[f"feedback {a.number}"] = clip(a.code), clip(a.feedback)

        def build(p: dict[str, str]) -> Messages:
            shown = "\n\n".join(attempt_text(a.number, a.passed, p[f"code {a.number}"], p[f"feedback {a.number}"])
                                for a in attempts) or "(none)"
            gt = f"\nGround truth (the reference answer):\n{p['ground_truth']}" if p["ground_truth"] else ""
            return [
                {"role": "system", "content": prompt("reflector", max_tags=wire.MAX_BULLET_TAGS,
                                                     extra=f"\n{p['instructions']}" if p["instructions"] else "")},
                {"role": "user", "content": prompt("reflector_user", task=p["task"], used_bullets=p["used_bullets"],
                                                   allowed_ids=allowed or "(none: leave bullet_tags empty)",
                                                   attempts=shown, ground_truth=gt)},
            ]

        return fit(build, parts, self.budget(ReflectorOutput), by_lines=("used_bullets",))

    def reflect(self, task: str, attempts: list[Attempt], used_bullets: str, ground_truth: Optional[str],
                episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[ReflectorOutput]:
        return self.ask(self.messages(task, attempts, used_bullets, ground_truth, instructions), ReflectorOutput,
                        episode_id)


class LLMCurator(LLMRole):
    kind = "curator"

    def messages(self, task: str, reflection: ReflectorOutput, playbook_text: str, outcome: str,
                 instructions: str = "") -> Messages:
        refl = json.dumps(reflection.model_dump(), indent=2, ensure_ascii=False)
        parts = {"playbook": playbook_text or "(empty)", "task": task, "outcome": outcome, "reflection": refl,
                 "instructions": instructions}

        def build(p: dict[str, str]) -> Messages:
            return [
                {"role": "system", "content": prompt("curator", max_ops=MAX_OPS_ASKED,
                                                     extra=f"\n{p['instructions']}" if p["instructions"] else "")},
                {"role": "user", "content": prompt("curator_user", playbook=p["playbook"], task=p["task"],
                                                   outcome=p["outcome"], reflection=p["reflection"])},
            ]

        return fit(build, parts, self.budget(CuratorOutput), by_lines=("playbook",))

    def curate(self, task: str, reflection: ReflectorOutput, playbook_text: str, outcome: str,
               episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[CuratorOutput]:
        return self.ask(self.messages(task, reflection, playbook_text, outcome, instructions), CuratorOutput,
                        episode_id)


# A reviewer reads code and what really happened when it ran; an optimizer
# rewrites it. Each learns into its own playbook (see core/episodes/review.py).


class LLMReviewer(LLMRole):
    kind = "reviewer"

    def messages(self, task: str, language: str, code: str, feedback: str, playbook_text: str) -> Messages:
        parts = {"playbook": playbook_text, "task": task, "code": clip(code), "feedback": clip(feedback)}

        def build(p: dict[str, str]) -> Messages:
            return [
                {"role": "system", "content": prompt("reviewer", language=language, playbook=p["playbook"],
                                                     max_issues=MAX_ISSUES_ASKED, max_ids=wire.MAX_BULLET_IDS)},
                {"role": "user", "content": prompt("reviewer_user", task=p["task"], code=p["code"],
                                                   feedback=p["feedback"])},
            ]

        return fit(build, parts, self.budget(ReviewerOutput), by_lines=("playbook",))

    def review(self, task: str, language: str, code: str, feedback: str, playbook_text: str,
               episode_id: Optional[str] = None) -> LLMResult[ReviewerOutput]:
        return self.ask(self.messages(task, language, code, feedback, playbook_text), ReviewerOutput, episode_id)


class LLMOptimizer(LLMRole):
    kind = "optimizer"

    def messages(self, task: str, language: str, code: str, feedback: str, review: ReviewerOutput,
                 playbook_text: str) -> Messages:
        parts = {"playbook": playbook_text, "task": task, "code": clip(code), "feedback": clip(feedback),
                 "issues": "\n".join(f"- {i}" for i in review.issues) or "(none listed)",
                 "suggestions": review.suggestions or "(none)"}

        def build(p: dict[str, str]) -> Messages:
            return [
                {"role": "system", "content": prompt("optimizer", language=language, playbook=p["playbook"],
                                                     fence=FENCE_TAG.get(language, ""),
                                                     max_ids=wire.MAX_BULLET_IDS)},
                {"role": "user", "content": prompt("optimizer_user", task=p["task"], code=p["code"],
                                                   feedback=p["feedback"], issues=p["issues"],
                                                   suggestions=p["suggestions"])},
            ]

        return fit(build, parts, self.budget(OptimizerOutput), by_lines=("playbook",))

    def optimize(self, task: str, language: str, code: str, feedback: str, review: ReviewerOutput,
                 playbook_text: str, episode_id: Optional[str] = None) -> LLMResult[OptimizerOutput]:
        return self.ask(self.messages(task, language, code, feedback, review, playbook_text),
                        OptimizerOutput.for_language(language), episode_id)
