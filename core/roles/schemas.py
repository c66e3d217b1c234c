"""What the roles answer (the ACE paper's JSON shapes) and what they are shown of earlier attempts."""

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from core.playbook.ops import OpIn

MAX_FEEDBACK_CHARS = 4000


class GeneratorOutput(BaseModel):
    reasoning: str = ""
    bullet_ids: list[str] = Field(default_factory=list)
    code: str
    language: str = "python"


class BulletTag(BaseModel):
    id: str
    tag: Literal["helpful", "harmful", "neutral"]


class ReflectorOutput(BaseModel):
    reasoning: str = ""
    error_identification: str = ""
    root_cause_analysis: str = ""
    correct_approach: str = ""
    key_insight: str = ""
    bullet_tags: list[BulletTag] = Field(default_factory=list)


class CuratorOutput(BaseModel):
    reasoning: str = ""
    operations: list[OpIn] = Field(default_factory=list)


class ReviewerOutput(BaseModel):
    reasoning: str = ""
    needs_optimization: bool = False
    issues: list[str] = Field(default_factory=list)
    suggestions: str = ""
    bullet_ids: list[str] = Field(default_factory=list)


class OptimizerOutput(BaseModel):
    reasoning: str = ""
    bullet_ids: list[str] = Field(default_factory=list)
    code: str
    language: str = "python"


@dataclass
class Attempt:
    """One generate-and-run round, as the Reflector and the next attempt see it."""

    number: int
    code: str
    feedback: str  # execution and test feedback, compact text
    passed: bool
    bullet_ids: list[str] = field(default_factory=list)


def clip(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"
