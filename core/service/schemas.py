"""The request and response bodies of the HTTP API.

Class names are the schema names in the OpenAPI document, which clients of the
reference ACE service rely on: rename none of them.
"""

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from core.playbook import PLAYBOOK_ID_RE, versions
from core.playbook.ops import DeltaIn

MAX_K = 1000
ReviewMode = Literal["auto", "manual"]


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


class CreatePlaybookIn(BaseModel):
    name: str
    description: Optional[str] = None
    id: Optional[str] = Field(None, pattern=PLAYBOOK_ID_RE.pattern, description="default: a new UUID")
    environment: Optional[str] = Field(None, max_length=64)
    review_mode: Optional[ReviewMode] = None


class UpdatePlaybookIn(BaseModel):
    name: Optional[str] = None
    description: Optional[str] = None
    review_mode: Optional[ReviewMode] = Field(None, description="send null to follow ACE_REVIEW_MODE again")


class CreateBulletIn(BaseModel):
    content: str
    section: Optional[str] = Field(None, max_length=200)


class ContentIn(BaseModel):
    content: str


class EditBulletIn(BaseModel):
    content: Optional[str] = None
    section: Optional[str] = Field(None, max_length=200)


class EmbedIn(BaseModel):
    prompt: str
    k: int = Field(20, ge=0, le=MAX_K)


class EmbedOut(BaseModel):
    prompt: str


class RetrieveIn(BaseModel):
    user_message: str
    k: int = Field(20, ge=0, le=MAX_K)


class RetrievedBulletOut(BulletOut):
    score: float = 0.0
    scores: dict[str, float] = Field(default_factory=dict)  # per signal: semantic, lexical, counters, provenance


class RetrieveOut(BaseModel):
    retrieved_bullets: list[RetrievedBulletOut]


class LearnIn(BaseModel):
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
    mode: Literal["propose", "apply"] = Field("propose", description="propose: wait for review; apply: all or nothing")


class DecisionIn(BaseModel):
    op_id: int
    approve: bool
    note: Optional[str] = Field(None, max_length=2000)
    content: Optional[str] = Field(None, description="edited text for ADD, UPDATE or MERGE")


class DecisionsIn(BaseModel):
    decisions: list[DecisionIn] = Field(min_length=1)
    actor: str = Field("api", max_length=100)


class OpDecisionIn(BaseModel):
    note: Optional[str] = Field(None, max_length=2000)
    content: Optional[str] = None
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


class HealthOut(BaseModel):
    status: str
    version: str
    llm_configured: bool
    worker: bool
    auth: bool
