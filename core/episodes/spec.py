"""What an episode is asked to do, the roles that do it, and what it reports back."""

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from core.config import Settings
from core.llm.client import LLMClient
from core.roles import Curator, Generator, LLMCurator, LLMGenerator, LLMReflector, Reflector


class TaskSpec(BaseModel):
    """What a user (or a benchmark) asks for."""

    task: str = Field(min_length=1, max_length=100_000)
    language: Literal["python", "javascript", "bash"] = "python"
    tests: Optional[str] = None
    expected_output: Optional[str] = None
    ground_truth: Optional[str] = None
    playbook_id: Optional[str] = None
    max_iterations: Optional[int] = Field(default=None, ge=1, le=10)
    review_mode: Optional[Literal["auto", "manual"]] = None
    mode: Literal["llm", "sandbox_only"] = "llm"
    code: Optional[str] = None  # for sandbox_only
    backend: Optional[Literal["local", "e2b"]] = None
    k: Optional[int] = Field(default=None, ge=0, le=200)
    entry_point: Optional[str] = None
    learn: bool = True  # False: evaluate with the playbook frozen (benchmark test split)
    bench_run_id: Optional[str] = None
    workflow: Literal["single", "review"] = "single"  # review: generator, reviewer, optimizer (core/episodes/review.py)
    rerun_of: Optional[str] = Field(default=None, max_length=64)  # the episode this re-runs (with edits)


@dataclass
class Roles:
    """The LLM roles of the single-generator loop; tests and benchmarks pass scripted ones."""

    generator: Generator
    reflector: Reflector
    curator: Curator

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> "Roles":
        llm = LLMClient(settings)
        return cls(LLMGenerator(llm), LLMReflector(llm), LLMCurator(llm))


@dataclass
class EpisodeResult:
    """How an episode ended, for the caller that ran it (the trace has the whole story)."""

    episode_id: str
    status: str
    success: Optional[bool]
    attempts: int
    playbook_id: str
    code: Optional[str] = None
    delta_id: Optional[str] = None
    version: Optional[int] = None
    error: Optional[str] = None
    reflection: Optional[dict[str, Any]] = None
    curation: Optional[dict[str, Any]] = None
    learning_skipped: Optional[str] = None  # why the episode learned nothing (a role's reply, no code, no time)
