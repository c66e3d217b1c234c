"""What the roles answer (the ACE paper's JSON shapes) and what they are shown of earlier attempts.

Each output model has two hooks the LLM client uses (`core.llm.client.LLMClient.structured`):
`wire_schema()`, the tight JSON schema sent to the model (`core.roles.wire`), and `from_reply(text)`,
which reads a raw reply leniently (`core.roles.replies`) and raises ValueError (or pydantic's
ValidationError) only when nothing usable is in it. Built directly (tests, scripted roles, the
benchmark), the models validate as strictly as before.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Self, cast

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from core.playbook.ops import OpIn
from core.roles import replies, wire

MAX_FEEDBACK_CHARS = 4000


class RoleOutput(BaseModel):
    """A role's answer: what it asks of the model (`wire_schema`) and how it reads the reply (`from_reply`)."""

    @classmethod
    def wire_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema()

    @classmethod
    def from_reply(cls, text: str) -> Self:
        raise NotImplementedError


class CodeOutput(RoleOutput):
    """A program from the model: the Generator's answer and the Optimizer's rewrite."""

    reasoning: str = ""
    bullet_ids: list[str] = Field(default_factory=list)
    code: str
    language: str = "python"

    # The sandbox language the reply is read for: its fences are preferred and the wire schema pins it.
    reply_language: ClassVar[Optional[str]] = None
    reasoning_chars: ClassVar[int] = 1500

    @classmethod
    def for_language(cls, language: Optional[str]) -> type[Self]:
        """This model, reading replies for one sandbox language (cached: one class per language)."""
        if not language or language == cls.reply_language:
            return cls
        key = (cls, language)
        if key not in _BOUND:
            _BOUND[key] = type(cls.__name__, (cls,), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__annotations__": {"reply_language": ClassVar[Optional[str]]}, "reply_language": language})
        return cast(type[Self], _BOUND[key])

    @classmethod
    def wire_schema(cls) -> dict[str, Any]:
        return wire.code_schema(cls.reply_language, cls.reasoning_chars)

    @classmethod
    def from_reply(cls, text: str) -> Self:
        return cls(**replies.code_reply(text, cls.reply_language))


_BOUND: dict[tuple[type[CodeOutput], str], type[CodeOutput]] = {}


class GeneratorOutput(CodeOutput):
    pass


class OptimizerOutput(CodeOutput):
    pass


class BulletTag(BaseModel):
    id: str
    tag: Literal["helpful", "harmful", "neutral"]


class ReflectorOutput(RoleOutput):
    reasoning: str = ""
    error_identification: str = ""
    root_cause_analysis: str = ""
    correct_approach: str = ""
    key_insight: str = ""
    bullet_tags: list[BulletTag] = Field(default_factory=list)

    @classmethod
    def wire_schema(cls) -> dict[str, Any]:
        return wire.reflector_schema()

    @classmethod
    def from_reply(cls, text: str) -> Self:
        return cls.model_validate(replies.reflection_reply(text))


class CuratorOutput(RoleOutput):
    reasoning: str = ""
    operations: list[OpIn] = Field(default_factory=list)
    # Operations of the reply that could not be used, `{"op": as given (clipped), "reason": plain words}`:
    # shown in the trace and the review, never asked of the model (not in its JSON schema).
    dropped: SkipJsonSchema[list[dict[str, Any]]] = Field(default_factory=list)

    @classmethod
    def wire_schema(cls) -> dict[str, Any]:
        return wire.curator_schema()

    @classmethod
    def from_reply(cls, text: str) -> Self:
        return cls(**replies.curation_reply(text))


class ReviewerOutput(RoleOutput):
    reasoning: str = ""
    needs_optimization: bool = False
    issues: list[str] = Field(default_factory=list)
    suggestions: str = ""
    bullet_ids: list[str] = Field(default_factory=list)

    @classmethod
    def wire_schema(cls) -> dict[str, Any]:
        return wire.reviewer_schema()

    @classmethod
    def from_reply(cls, text: str) -> Self:
        return cls(**replies.review_reply(text))


@dataclass
class Attempt:
    """One generate-and-run round, as the Reflector and the next attempt see it."""

    number: int
    code: str
    feedback: str  # execution and test feedback, compact text
    passed: bool
    bullet_ids: list[str] = field(default_factory=list)


def clip(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """At most about `limit` characters: the head and the tail, with how much was cut between them."""
    if len(text) <= limit:
        return text
    half = max(limit, 0) // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[len(text) - half:] if half else ''}"
