"""SQLModel tables. Every change here needs an Alembic migration in core/migrations.

Datetimes are timezone-aware UTC. No relationships are declared: the code
queries explicitly, which keeps sessions short and lets the same rows be read
from several processes without lazy-loading surprises.
"""

from datetime import UTC, datetime
from typing import Any, Optional
from uuid import uuid4

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:12]}"


class UTCDateTime(TypeDecorator):
    """Aware UTC in and out; SQLite stores no zone and would hand back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default_factory=utcnow if not nullable else (lambda: None),
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class Playbook(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    name: str
    description: str = ""
    environment: str = "general"
    review_mode: Optional[str] = None  # None: follow the ACE_REVIEW_MODE setting
    current_version: int = 0
    next_seq: int = 1
    created_at: datetime = _ts()
    modified_at: datetime = _ts()


class Bullet(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("playbook_id", "id", name="uq_bullet_playbook_id"),)

    pk: Optional[int] = Field(default=None, primary_key=True)
    id: str = Field(index=True, max_length=64)
    playbook_id: str = Field(foreign_key="playbook.id", index=True)
    section: str = "general"
    content: str = Field(sa_column=Column(Text, nullable=False))
    helpful: int = 0
    harmful: int = 0
    neutral: int = 0
    status: str = "active"  # active | removed
    merged_into: Optional[str] = None
    source_episode_id: Optional[str] = None
    source_delta_id: Optional[str] = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class BulletRevision(SQLModel, table=True):
    """The full state of a bullet as of a playbook version (copy on write)."""

    __table_args__ = (Index("ix_revision_lookup", "playbook_id", "bullet_pk", "version"),)

    rid: Optional[int] = Field(default=None, primary_key=True)
    playbook_id: str = Field(foreign_key="playbook.id")
    bullet_pk: int = Field(foreign_key="bullet.pk")
    bullet_id: str
    version: int
    section: str
    content: str = Field(sa_column=Column(Text, nullable=False))
    helpful: int
    harmful: int
    neutral: int
    status: str


class PlaybookVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("playbook_id", "number", name="uq_version_number"),)

    vid: Optional[int] = Field(default=None, primary_key=True)
    playbook_id: str = Field(foreign_key="playbook.id", index=True)
    number: int
    parent: Optional[int] = None
    delta_id: Optional[str] = None
    summary: str = ""
    bullet_count: int = 0
    token_count: int = 0
    created_at: datetime = _ts()


class Delta(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("d"), primary_key=True)
    playbook_id: str = Field(foreign_key="playbook.id", index=True)
    episode_id: Optional[str] = Field(default=None, index=True)
    reasoning: str = ""
    source: str = "curator"  # curator | human | api | import | restore
    status: str = "pending"  # pending | applied | partially_applied | rejected
    version: Optional[int] = None  # the version this delta produced
    base_version: int = 0
    created_at: datetime = _ts()
    decided_at: Optional[datetime] = _ts(nullable=True)
    # ops a model proposed that were dropped before they reached this delta: [{"op": {...}, "reason": "..."}]
    dropped: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON))


class DeltaOp(SQLModel, table=True):
    oid: Optional[int] = Field(default=None, primary_key=True)
    delta_id: str = Field(foreign_key="delta.id", index=True)
    seq: int
    type: str  # ADD | UPDATE | TAG | REMOVE | MERGE
    section: Optional[str] = None
    content: Optional[str] = Field(default=None, sa_column=Column(Text))
    bullet_id: Optional[str] = None
    bullet_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    tag: Optional[str] = None
    justification: str = ""
    evidence: str = ""
    before: Optional[str] = Field(default=None, sa_column=Column(Text))  # content when proposed
    decision: str = "pending"  # pending | approved | rejected
    decided_by: Optional[str] = None
    decided_at: Optional[datetime] = _ts(nullable=True)
    note: Optional[str] = None
    error: Optional[str] = None
    result_bullet_id: Optional[str] = None


class Episode(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("ep"), primary_key=True)
    playbook_id: str = Field(foreign_key="playbook.id", index=True)
    task: str = Field(sa_column=Column(Text, nullable=False))
    language: str = "python"
    tests: Optional[str] = Field(default=None, sa_column=Column(Text))
    expected_output: Optional[str] = Field(default=None, sa_column=Column(Text))
    ground_truth: Optional[str] = Field(default=None, sa_column=Column(Text))
    mode: str = "llm"  # llm | sandbox_only | learn
    status: str = Field(default="queued", index=True)  # queued|running|succeeded|failed|error|cancelled
    success: Optional[bool] = None
    attempts: int = 0
    max_iterations: int = 3
    review_mode: str = "auto"
    routing_reason: str = ""
    backend: str = "local"
    isolation: str = ""
    model: str = ""
    code: Optional[str] = Field(default=None, sa_column=Column(Text))
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    tokens: int = 0
    cost: float = 0.0
    llm_ms: float = 0.0
    sandbox_ms: float = 0.0
    delta_id: Optional[str] = None
    job_id: Optional[str] = Field(default=None, index=True)
    bench_run_id: Optional[str] = Field(default=None, index=True)
    rerun_of: Optional[str] = Field(default=None, index=True)  # the episode this one re-ran, with edits
    workflow: str = Field(default="single", sa_column_kwargs={"server_default": "single"})  # single | review
    created_at: datetime = _ts(index=True)
    started_at: Optional[datetime] = _ts(nullable=True)
    finished_at: Optional[datetime] = _ts(nullable=True)


class Event(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("episode_id", "seq", name="uq_event_seq"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    episode_id: str = Field(foreign_key="episode.id", index=True)
    seq: int
    kind: str  # generate|execute|evaluate|reflect|curate|apply|route|error|output|info
    attempt: Optional[int] = None
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    started_at: datetime = _ts()
    duration_ms: Optional[float] = None


class Reflection(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    episode_id: str = Field(foreign_key="episode.id", index=True)
    playbook_id: str = Field(foreign_key="playbook.id", index=True)
    reasoning: str = Field(default="", sa_column=Column(Text, nullable=False))
    error_identification: str = Field(default="", sa_column=Column(Text, nullable=False))
    root_cause_analysis: str = Field(default="", sa_column=Column(Text, nullable=False))
    correct_approach: str = Field(default="", sa_column=Column(Text, nullable=False))
    key_insight: str = Field(default="", sa_column=Column(Text, nullable=False))
    bullet_tags: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class LLMCall(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    episode_id: Optional[str] = Field(default=None, index=True)
    role: str
    model: str
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    response: Optional[str] = Field(default=None, sa_column=Column(Text))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    mode: str = ""  # json_schema | json_object | plain
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts()
    finish_reason: Optional[str] = None  # stop | length | ... as the server said; None: no reply
    max_tokens: Optional[int] = None  # the cap the request carried
    retry: int = 0  # 0 for the first request of a round, n for its n-th retry
    round: int = 1  # 1, then 2 for the repair request
    cost: float = 0.0  # USD, from ACE_PRICE_INPUT / ACE_PRICE_OUTPUT


class LLMEndpointMode(SQLModel, table=True):
    """The strongest output mode an endpoint and model accepted, so a new process does not pay refused requests
    again; `refused_at` says when a stronger one was last refused, to try it again after a while."""

    endpoint: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    mode: str  # json_schema | json_object | plain
    refused_at: datetime = _ts()


class Job(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("job"), primary_key=True)
    kind: str  # episode | learn | bench
    status: str = Field(default="queued", index=True)  # queued|running|done|failed|cancelled
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    max_attempts: int = 2
    cancel_requested: bool = False
    worker_id: Optional[str] = None
    created_at: datetime = _ts(index=True)
    started_at: Optional[datetime] = _ts(nullable=True)
    finished_at: Optional[datetime] = _ts(nullable=True)
    heartbeat_at: Optional[datetime] = _ts(nullable=True)


class BenchRun(SQLModel, table=True):
    """One benchmark run: baseline and ACE arms over a suite, resumable."""

    id: str = Field(default_factory=lambda: new_id("bench"), primary_key=True)
    suite: str
    status: str = "queued"  # queued | running | done | failed | cancelled
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    summary: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    playbook_id: Optional[str] = None
    job_id: Optional[str] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts(index=True)
    finished_at: Optional[datetime] = _ts(nullable=True)


class BenchResult(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "arm", "phase", "epoch", "task_key", name="uq_bench_result"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="benchrun.id", index=True)
    arm: str  # baseline | ace
    phase: str  # train | test
    epoch: int = 0
    task_key: str
    episode_id: Optional[str] = None
    success: bool = False
    attempts: int = 0
    tokens: int = 0
    cost: float = 0.0
    duration_ms: float = 0.0
    llm_ms: float = 0.0
    sandbox_ms: float = 0.0
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts()


from sqlalchemy import LargeBinary  # noqa: E402  (kept beside the one table that needs it)


class BulletEmbedding(SQLModel, table=True):
    """A bullet's vector under one embedding model (and its source task's, for provenance).

    Rows are replaced, never edited, so the autoincrement `eid` only grows and
    `max(eid)` tells a reader's cache that something changed.
    """

    __table_args__ = (
        UniqueConstraint("bullet_pk", "model", name="uq_embedding_bullet_model"),
        Index("ix_embedding_playbook_model", "playbook_id", "model", "eid"),
        {"sqlite_autoincrement": True},
    )

    eid: Optional[int] = Field(default=None, primary_key=True)
    bullet_pk: int = Field(foreign_key="bullet.pk")
    playbook_id: str = Field(foreign_key="playbook.id")
    model: str
    dims: int
    content_hash: str
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32, unit length
    task_vector: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = _ts()
