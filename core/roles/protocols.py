"""Each role is a Protocol, so the loop takes any implementation: the LLM-backed ones, a scripted
one in tests and benchmarks, another agent's reviewer."""

from typing import Optional, Protocol

from core.llm.client import LLMResult
from core.roles.schemas import Attempt, CuratorOutput, GeneratorOutput, OptimizerOutput, ReflectorOutput, ReviewerOutput


class Generator(Protocol):
    def generate(self, task: str, language: str, playbook_text: str, previous: list[Attempt],
                 episode_id: Optional[str] = None) -> LLMResult[GeneratorOutput]: ...


class Reflector(Protocol):
    def reflect(self, task: str, attempts: list[Attempt], used_bullets: str, ground_truth: Optional[str],
                episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[ReflectorOutput]: ...


class Curator(Protocol):
    def curate(self, task: str, reflection: ReflectorOutput, playbook_text: str, outcome: str,
               episode_id: Optional[str] = None, instructions: str = "") -> LLMResult[CuratorOutput]: ...


class Reviewer(Protocol):
    def review(self, task: str, language: str, code: str, feedback: str, playbook_text: str,
               episode_id: Optional[str] = None) -> LLMResult[ReviewerOutput]: ...


class Optimizer(Protocol):
    def optimize(self, task: str, language: str, code: str, feedback: str, review: ReviewerOutput,
                 playbook_text: str, episode_id: Optional[str] = None) -> LLMResult[OptimizerOutput]: ...
