"""The LLM-backed roles: each fills its templates from core/roles/prompts/ and asks the model for
its JSON shape (`core.roles.schemas`)."""

import json
from pathlib import Path
from string import Template
from typing import Any, Optional

from core.llm.client import LLMClient, LLMResult
from core.roles.schemas import (
    Attempt,
    CuratorOutput,
    GeneratorOutput,
    OptimizerOutput,
    ReflectorOutput,
    ReviewerOutput,
    clip,
)

PROMPTS = Path(__file__).resolve().parent / "prompts"


def prompt(name: str, **values: Any) -> str:
    return Template((PROMPTS / f"{name}.md").read_text()).safe_substitute(**values).strip()


def _attempt_text(a: Attempt) -> str:
    verdict = "PASSED" if a.passed else "FAILED"
    return (f"--- attempt {a.number} ({verdict}) ---\nCode:\n```\n{clip(a.code)}\n```\n"
            f"Execution feedback:\n{clip(a.feedback)}")


class LLMGenerator:
    def __init__(self, llm: LLMClient, role: str = "generator"):
        self.llm, self.role = llm, role

    def messages(self, task: str, language: str, playbook_text: str, previous: list[Attempt]) -> list[dict[str, Any]]:
        extra = ""
        if previous:
            last = previous[-1]
            extra = ("\nYour previous attempt failed. Fix it using the real execution feedback below.\n"
                     + _attempt_text(last))
        return [
            {"role": "system", "content": prompt("generator", language=language, playbook=playbook_text)},
            {"role": "user", "content": prompt("generator_user", task=task, extra=extra)},
        ]

    def generate(self, task: str, language: str, playbook_text: str, previous: list[Attempt],
                 episode_id: Optional[str] = None) -> LLMResult[GeneratorOutput]:
        return self.llm.structured(self.role, self.messages(task, language, playbook_text, previous),
                                   GeneratorOutput, episode_id)


class LLMReflector:
    def __init__(self, llm: LLMClient, role: str = "reflector"):
        self.llm, self.role = llm, role

    def reflect(self, task: str, attempts: list[Attempt], used_bullets: str, ground_truth: Optional[str],
                episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[ReflectorOutput]:
        gt = f"\nGround truth (the reference answer):\n{clip(ground_truth)}" if ground_truth else ""
        msgs = [
            {"role": "system", "content": prompt("reflector", extra=f"\n{instructions}" if instructions else "")},
            {"role": "user", "content": prompt("reflector_user", task=task, used_bullets=used_bullets or "(none)",
                                               attempts="\n\n".join(_attempt_text(a) for a in attempts) or "(none)",
                                               ground_truth=gt)},
        ]
        return self.llm.structured(self.role, msgs, ReflectorOutput, episode_id)


class LLMCurator:
    def __init__(self, llm: LLMClient, role: str = "curator"):
        self.llm, self.role = llm, role

    def curate(self, task: str, reflection: ReflectorOutput, playbook_text: str, outcome: str,
               episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[CuratorOutput]:
        refl = json.dumps(reflection.model_dump(), indent=2, ensure_ascii=False)
        msgs = [
            {"role": "system", "content": prompt("curator", extra=f"\n{instructions}" if instructions else "")},
            {"role": "user", "content": prompt("curator_user", playbook=playbook_text, task=task, outcome=outcome,
                                               reflection=refl)},
        ]
        return self.llm.structured(self.role, msgs, CuratorOutput, episode_id)


# A reviewer reads code and what really happened when it ran; an optimizer
# rewrites it. Each learns into its own playbook (see core/episodes/review.py).


class LLMReviewer:
    def __init__(self, llm: LLMClient, role: str = "reviewer"):
        self.llm, self.role = llm, role

    def review(self, task: str, language: str, code: str, feedback: str, playbook_text: str,
               episode_id: Optional[str] = None) -> LLMResult[ReviewerOutput]:
        msgs = [
            {"role": "system", "content": prompt("reviewer", language=language, playbook=playbook_text)},
            {"role": "user", "content": prompt("reviewer_user", task=task, code=clip(code), feedback=clip(feedback))},
        ]
        return self.llm.structured(self.role, msgs, ReviewerOutput, episode_id)


class LLMOptimizer:
    def __init__(self, llm: LLMClient, role: str = "optimizer"):
        self.llm, self.role = llm, role

    def optimize(self, task: str, language: str, code: str, feedback: str, review: ReviewerOutput,
                 playbook_text: str, episode_id: Optional[str] = None) -> LLMResult[OptimizerOutput]:
        issues = "\n".join(f"- {i}" for i in review.issues) or "(none listed)"
        msgs = [
            {"role": "system", "content": prompt("optimizer", language=language, playbook=playbook_text)},
            {"role": "user", "content": prompt("optimizer_user", task=task, code=clip(code), feedback=clip(feedback),
                                               issues=issues, suggestions=review.suggestions or "(none)")},
        ]
        return self.llm.structured(self.role, msgs, OptimizerOutput, episode_id)
