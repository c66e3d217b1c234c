"""The request and response bodies of the HTTP API.

Class names are the schema names in the OpenAPI document, which clients of the
reference ACE service rely on: rename none of them. Request bodies are strict
(`Body`): `k: true` or `k: "5"` is not a number, `approve: "yes"` not a boolean.
Text fields holding NUL or a lone surrogate never get here (`core.service.body`).
"""

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from core.playbook import PLAYBOOK_ID_RE, versions
from core.playbook.ops import MAX_BULLET_CHARS, MAX_OPS, DeltaIn, OpIn

MAX_K = 1000
MAX_OP_ID = 2**53 - 1  # exact as a JSON number everywhere
MAX_NAME = 200
MAX_DESCRIPTION = 2000
ReviewMode = Literal["auto", "manual"]
CONTENT = "the bullet's text (blank text is refused)"


class Body(BaseModel):
    """A request body: types as sent, no coercion."""

    model_config = ConfigDict(strict=True)


class PlaybookOut(BaseModel):
    id: str
    name: Optional[str] = None
    description: Optional[str] = None
    created_at: datetime
    modified_at: datetime
    environment: str = "general"
    review_mode: Optional[str] = Field(None, description="auto | manual; null follows ACE_REVIEW_MODE")
    current_version: int = 0


class BulletMetadata(BaseModel):
    helpful_count: int = 0
    harmful_count: int = 0
    neutral_count: int = 0


class BulletOut(BaseModel):
    id: str
    playbook_id: str
    content: str
    metadata: BulletMetadata
    created_at: datetime
    modified_at: datetime
    section: str = "strategies"
    status: str = "active"


class PlaybookEnvelope(BaseModel):
    playbook: PlaybookOut


class PlaybooksEnvelope(BaseModel):
    playbooks: list[PlaybookOut]


class BulletEnvelope(BaseModel):
    bullet: BulletOut


class BulletsEnvelope(BaseModel):
    bullets: list[BulletOut]


class CreatePlaybookIn(Body):
    name: str = Field(max_length=MAX_NAME)
    description: Optional[str] = Field(None, max_length=MAX_DESCRIPTION)
    id: Optional[str] = Field(None, pattern=PLAYBOOK_ID_RE.pattern, description="default: a new UUID")
    environment: Optional[str] = Field(None, max_length=64)
    review_mode: Optional[ReviewMode] = None


class UpdatePlaybookIn(Body):
    name: Optional[str] = Field(None, max_length=MAX_NAME)
    description: Optional[str] = Field(None, max_length=MAX_DESCRIPTION)
    review_mode: Optional[ReviewMode] = Field(None, description="send null to follow ACE_REVIEW_MODE again")


class CreateBulletIn(Body):
    content: str = Field(min_length=1, max_length=MAX_BULLET_CHARS, description=CONTENT)
    section: Optional[str] = Field(None, max_length=200)


class ContentIn(Body):
    content: str = Field(min_length=1, max_length=MAX_BULLET_CHARS, description=CONTENT)


class EditBulletIn(Body):
    content: Optional[str] = Field(None, min_length=1, max_length=MAX_BULLET_CHARS, description=CONTENT)
    section: Optional[str] = Field(None, max_length=200)


class EmbedIn(Body):
    prompt: str
    k: int = Field(20, ge=0, le=MAX_K)


class EmbedOut(BaseModel):
    prompt: str


class RetrieveIn(Body):
    user_message: str
    k: int = Field(20, ge=0, le=MAX_K)


class RetrievedBulletOut(BulletOut):
    score: float = 0.0
    scores: dict[str, float] = Field(default_factory=dict)  # per signal: semantic, lexical, counters, provenance


class RetrieveOut(BaseModel):
    retrieved_bullets: list[RetrievedBulletOut]


class LearnIn(Body):
    user_message: str
    trajectory: str
    ground_truth: Optional[str] = None
    evaluation: Optional[str] = None
    reflector_additional_instructions: Optional[str] = None
    curator_additional_instructions: Optional[str] = None


class LearnStarted(BaseModel):
    learn_job_id: str


class LearnJobOut(BaseModel):
    id: str
    playbook_id: str
    status: Literal["pending", "running", "completed", "failed"]
    error: Optional[str] = None
    reflection: Optional[dict[str, Any]] = None
    curation: Optional[dict[str, Any]] = None
    episode_id: Optional[str] = None
    delta_id: Optional[str] = None
    version: Optional[int] = None
    delta_status: Optional[str] = Field(None, description="applied | pending (waiting for review) | empty")
    attempts: int = 0
    created_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None


class LearnJobEnvelope(BaseModel):
    learn_job: LearnJobOut


class DeltaOpOut(BaseModel):
    id: int
    seq: int
    type: str
    section: Optional[str] = None
    content: Optional[str] = None
    bullet_id: Optional[str] = None
    bullet_ids: list[str] = []
    tag: Optional[str] = None
    justification: str = ""
    evidence: str = ""
    before: Optional[str] = None
    decision: str
    decided_by: Optional[str] = None
    decided_at: Optional[datetime] = None
    note: Optional[str] = None
    result_bullet_id: Optional[str] = None


class DeltaOut(BaseModel):
    id: str
    playbook_id: str
    episode_id: Optional[str] = None
    reasoning: str = ""
    source: str
    status: str
    version: Optional[int] = None
    base_version: int
    created_at: datetime
    decided_at: Optional[datetime] = None
    operations: list[DeltaOpOut]


class DeltaEnvelope(BaseModel):
    delta: DeltaOut
    version: Optional[int] = Field(None, description="the playbook version this call produced, if any")


class DeltasEnvelope(BaseModel):
    deltas: list[DeltaOut]


class NewDeltaIn(DeltaIn):
    """Typed operations. Every bullet an UPDATE, TAG, REMOVE or MERGE names must exist and be active when the
    delta arrives (422 naming the op and the id otherwise), whether it is applied or waits for review."""

    model_config = ConfigDict(strict=True)
    operations: list[OpIn] = Field(min_length=1, max_length=MAX_OPS)
    mode: Literal["propose", "apply"] = Field("propose", description="propose: wait for review; apply: all or nothing")


class DecisionIn(Body):
    op_id: int = Field(ge=1, le=MAX_OP_ID)
    approve: bool
    note: Optional[str] = Field(None, max_length=2000)
    content: Optional[str] = Field(None, min_length=1, max_length=MAX_BULLET_CHARS,
                                   description="edited text for ADD, UPDATE or MERGE")


class DecisionsIn(Body):
    decisions: list[DecisionIn] = Field(min_length=1, max_length=1000)
    actor: str = Field("api", max_length=100)


class OpDecisionIn(Body):
    note: Optional[str] = Field(None, max_length=2000)
    content: Optional[str] = Field(None, min_length=1, max_length=MAX_BULLET_CHARS)
    actor: str = Field("api", max_length=100)


class VersionOut(BaseModel):
    number: int
    parent: Optional[int] = None
    delta_id: Optional[str] = None
    summary: str = ""
    bullet_count: int = 0
    token_count: int = 0
    created_at: datetime


class VersionsEnvelope(BaseModel):
    current_version: int
    versions: list[VersionOut]


BulletStateOut = versions.BulletState  # a bullet as it was at a version; pydantic serialises the dataclass


class VersionEnvelope(BaseModel):
    version: VersionOut
    bullets: list[BulletStateOut]


class ChangedOut(BaseModel):
    before: BulletStateOut
    after: BulletStateOut


class DiffOut(BaseModel):
    playbook_id: str
    a: int
    b: int
    added: list[BulletStateOut]
    removed: list[BulletStateOut]
    changed: list[ChangedOut]


class DiffEnvelope(BaseModel):
    diff: DiffOut


class RestoreOut(BaseModel):
    version: int
    playbook: PlaybookOut


class ImportOut(BaseModel):
    imported: int
    version: int
    playbook: PlaybookOut


class SectionOut(BaseModel):
    name: str
    bullet_count: int


class SectionsEnvelope(BaseModel):
    sections: list[SectionOut]


_IMPORTED_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_BULLET_CHARS, "pattern": r"\S"}
_SKILLS = {"type": "object", "additionalProperties": {"type": "object", "anyOf": [
    {"required": ["content"]}, {"required": ["insight"]}, {"required": ["issue"]}]}}
IMPORT_BODY: dict[str, Any] = {"required": True, "description": (
    "A playbook file: our JSON export, a kayba skillbook JSON, or an ace-agent text playbook "
    "(`## section` lines, then `[id] helpful=X harmful=Y :: content`). At most 32 levels of JSON nesting."),
    "content": {
        "application/json": {"schema": {"anyOf": [
            {"type": "object", "title": "Export", "required": ["format", "bullets"], "properties": {
                "format": {"const": "ace-playground/1"}, "playbook": {"type": ["object", "null"]},
                "bullets": {"type": "array", "items": {"type": "object", "required": ["content"],
                                                       "properties": {"content": _IMPORTED_TEXT}}}}},
            {"type": "object", "title": "Skillbook", "required": ["skills"], "properties": {"skills": _SKILLS}},
            {"type": "object", "title": "Skillbook (older)", "required": ["bullets"],
             "properties": {"bullets": _SKILLS}}]}},
        "text/plain": {"schema": {"type": "string", "minLength": 1}}}}


class HealthOut(BaseModel):
    status: str
    version: str
    llm_configured: bool
    worker: bool
    auth: bool
