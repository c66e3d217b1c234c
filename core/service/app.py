"""The ACE service: the playbook core over HTTP, for agents written anywhere.

Agents call `embed_prompt` before inference and `episodes/learn` after a run.
Paths, status codes and envelopes match the reference ACE service
(CakeCrusher/ACE_service) so its web client and integrations work unchanged;
versions, diffs, review of pending deltas, export and import come on top.
Every bullet change goes through `core.playbook.deltas` and so becomes a version.
Learning runs on the durable job queue, never in the request.
"""

import hmac
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, AsyncIterator, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from core.jobs import queue as jobs
from core.playbook import deltas as P
from core.playbook import portability
from core.retrieval import search as retrieval
from core.playbook import versions
from core.config import Settings, get_settings
from core.storage.db import get_engine, read_session, write_session
from core.storage.models import Bullet, Delta, DeltaOp, Job, Playbook, utcnow
from core.playbook.ops import DeltaError, DeltaIn, normalize_section

log = logging.getLogger("ace.service")

VERSION = "0.1.0"
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_CORS = ("http://localhost:3000", "http://localhost:8080", "http://127.0.0.1:3000", "http://127.0.0.1:8080")
MAX_K = 1000
JOB_STATUS = {"queued": "pending", "running": "running", "done": "completed", "failed": "failed", "cancelled": "failed"}

PlaybookId = Annotated[str, Path(pattern=P.PLAYBOOK_ID_RE.pattern, description=(
    "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit; created on first use"))]
BulletId = Annotated[str, Path(max_length=64)]
JobId = Annotated[str, Path(max_length=64)]
DeltaId = Annotated[str, Path(max_length=64)]
VersionNo = Annotated[int, Path(ge=0, le=2**31)]
ReviewMode = Literal["auto", "manual"]


# ------------------------------------------------------------------ schemas


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
    id: Optional[str] = Field(None, pattern=P.PLAYBOOK_ID_RE.pattern, description="default: a new UUID")
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


# ------------------------------------------------------------------ mapping


def playbook_out(pb: Playbook) -> PlaybookOut:
    return PlaybookOut(id=pb.id, name=pb.name, description=pb.description, created_at=pb.created_at,
                       modified_at=pb.modified_at, environment=pb.environment, review_mode=pb.review_mode,
                       current_version=pb.current_version)


def bullet_out(b: Bullet) -> BulletOut:
    return BulletOut(id=b.id, playbook_id=b.playbook_id, content=b.content,
                     metadata=BulletMetadata(helpful_count=b.helpful, harmful_count=b.harmful,
                                             neutral_count=b.neutral),
                     created_at=b.created_at, modified_at=b.updated_at, section=b.section, status=b.status)


def learn_job_out(job: Job) -> LearnJobOut:
    result = job.result or {}
    error = job.error if job.status in ("failed", "cancelled") else None
    return LearnJobOut(id=job.id, playbook_id=str((job.payload or {}).get("playbook_id", "")),
                       status=JOB_STATUS.get(job.status, "failed"),  # type: ignore[arg-type]
                       error=error, reflection=result.get("reflection"), curation=result.get("curation"),
                       episode_id=result.get("episode_id"), delta_id=result.get("delta_id"),
                       version=result.get("version"), delta_status=result.get("status"), attempts=job.attempts,
                       created_at=job.created_at, finished_at=job.finished_at)


def delta_out(d: Delta, ops: list[DeltaOp]) -> DeltaOut:
    return DeltaOut(id=d.id, playbook_id=d.playbook_id, episode_id=d.episode_id, reasoning=d.reasoning,
                    source=d.source, status=d.status, version=d.version, base_version=d.base_version,
                    created_at=d.created_at, decided_at=d.decided_at,
                    operations=[DeltaOpOut(id=o.oid or 0, seq=o.seq, type=o.type, section=o.section,
                                           content=o.content, bullet_id=o.bullet_id,
                                           bullet_ids=list(o.bullet_ids or []), tag=o.tag,
                                           justification=o.justification, evidence=o.evidence, before=o.before,
                                           decision=o.decision, decided_by=o.decided_by, decided_at=o.decided_at,
                                           note=o.note, result_bullet_id=o.result_bullet_id)
                                for o in sorted(ops, key=lambda o: o.seq)])


def state_out(st: versions.BulletState) -> versions.BulletState:
    return st


# ------------------------------------------------------------------ helpers


def playbook_dep(playbook_id: PlaybookId) -> Playbook:
    """Every route under /playbooks/{id} creates a missing playbook, as the reference does."""
    return P.get_or_create_playbook(playbook_id)


PlaybookDep = Annotated[Playbook, Depends(playbook_dep)]


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found")


def live_bullet(pid: str, bid: str) -> Bullet:
    b = P.get_bullet(pid, bid)
    if b is None or b.status != "active":
        raise not_found("Bullet")
    return b


def change_bullet(pid: str, bid: Optional[str], op: dict[str, Any]) -> Bullet:
    """One op through apply_delta, so the change is a new version like any other."""
    if bid is not None:
        live_bullet(pid, bid)
    try:
        res = P.apply_delta(pid, [op], source="api", actor="api")
    except DeltaError as exc:
        if bid is not None and ("does not exist" in str(exc) or "was removed" in str(exc)):
            raise not_found("Bullet") from None
        raise
    b = P.get_bullet(pid, res.results[0].bullet_id or "")
    assert b is not None
    return b


def load_delta(pid: str, delta_id: str) -> DeltaOut:
    with read_session() as s:
        d = s.get(Delta, delta_id)
        if d is None or d.playbook_id != pid:
            raise not_found("Delta")
        ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta_id)))
    return delta_out(d, ops)


def learn_job(pid: str, job_id: str) -> Job:
    job = jobs.get_job(job_id)
    if job is None or job.kind != "learn" or (job.payload or {}).get("playbook_id") != pid:
        raise not_found("Learn job")
    return job


def check_version(pb: Playbook, number: int) -> None:
    if number > pb.current_version:
        raise HTTPException(404, f"Version not found: playbook {pb.id!r} has versions 0 to {pb.current_version}")


def explain(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 list, with a plain message for a bad playbook id."""
    out = []
    for e in errors:
        e = dict(e)
        if e.get("loc") and e["loc"][-1] == "playbook_id" and e.get("type") == "string_pattern_mismatch":
            e["msg"] = (f"invalid playbook id {str(e.get('input'))[:80]!r}: use 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit")
        out.append(e)
    return out


def cors_origins(settings: Settings) -> list[str]:
    items = [o.strip() for o in settings.service_cors_origins.split(",") if o.strip()]
    return items or list(DEFAULT_CORS)


# ------------------------------------------------------------------ the guard

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Guard:
    """Bearer token and body size checked before any route or parser runs.

    Plain ASGI rather than BaseHTTPMiddleware: it costs microseconds per
    request, and a rejected body is never read past the limit.
    """

    def __init__(self, app: ASGIApp, token: Optional[str], max_body: int, import_max: int):
        self.app, self.max_body, self.import_max = app, max_body, import_max
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.expected is not None and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if given[:7].lower() == b"bearer ":
                given = b"Bearer " + given[7:].strip()
            if not hmac.compare_digest(given, self.expected):
                return await JSONResponse(
                    {"detail": "Missing or invalid bearer token: send 'Authorization: Bearer <ACE_SERVICE_TOKEN>'"},
                    401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        limit = self.import_max if path.endswith("/import") else self.max_body
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await JSONResponse({"detail": "Invalid Content-Length header"}, 400)(scope, receive, send)
            if n > limit:
                return await self._too_large(scope, receive, send, limit)
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            return await self.app(scope, receive, send)
        buffered: list[Any] = []  # chunked body: count it as it comes
        total = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            total += len(msg.get("body", b""))
            if total > limit:
                return await self._too_large(scope, receive, send, limit)
            buffered.append(msg)
            if not msg.get("more_body"):
                break

        async def replay() -> Any:
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Any, send: Any, limit: int) -> None:
        await JSONResponse({"detail": f"Request body too large: the limit is {limit:,} bytes "
                                      "(ACE_SERVICE_MAX_BODY)"}, 413)(scope, receive, send)


# ------------------------------------------------------------------ routes

prompts = APIRouter(prefix="/playbooks/{playbook_id}", tags=["Prompts"])
playbooks = APIRouter(prefix="/playbooks", tags=["Playbooks"])
bullets = APIRouter(prefix="/playbooks/{playbook_id}/bullets", tags=["Bullets"])
learning = APIRouter(prefix="/playbooks/{playbook_id}/episodes/learn", tags=["Learning"])
review = APIRouter(prefix="/playbooks/{playbook_id}", tags=["Versions and review"])


@prompts.post("/embed_prompt", response_model=EmbedOut)
async def embed_prompt(playbook_id: PlaybookId, body: EmbedIn) -> dict[str, str]:
    """The prompt with the top-k relevant bullets between **PLAYBOOK_BEGIN** and **PLAYBOOK_END**."""
    # The common case (the in-memory index is at the playbook's current version) takes well under a
    # millisecond of CPU: done here on the event loop it skips two thread hops and the GIL fights of
    # many threads. A refresh, a cold bullet, an embedder or k=0 (which may create the playbook) runs
    # in the thread pool as before.
    if body.k > 0:
        try:
            with retrieval.cached_only():
                return {"prompt": P.embed_prompt(playbook_id, body.prompt, body.k)}
        except retrieval.NotCached:
            pass
    return {"prompt": await run_in_threadpool(P.embed_prompt, playbook_id, body.prompt, body.k)}


@playbooks.get("", response_model=PlaybooksEnvelope)
def list_playbooks() -> PlaybooksEnvelope:
    return PlaybooksEnvelope(playbooks=[playbook_out(p) for p in P.list_playbooks()])


@playbooks.post("", response_model=PlaybookEnvelope, status_code=201, responses={409: {"description": "id taken"}})
def create_playbook(body: CreatePlaybookIn) -> PlaybookEnvelope:
    pid = body.id or str(uuid.uuid4())
    if body.id and P.get_playbook(pid) is not None:
        raise HTTPException(409, f"Playbook {pid!r} already exists")
    P.get_or_create_playbook(pid, name=body.name, environment=body.environment, description=body.description or "")
    pb = update_playbook_row(pid, {"review_mode": body.review_mode}) if body.review_mode else P.get_playbook(pid)
    assert pb is not None
    return PlaybookEnvelope(playbook=playbook_out(pb))


@playbooks.get("/{playbook_id}", response_model=PlaybookEnvelope)
def get_playbook(pb: PlaybookDep) -> PlaybookEnvelope:
    return PlaybookEnvelope(playbook=playbook_out(pb))


def update_playbook_row(pid: str, changes: dict[str, Any]) -> Playbook:
    """Name, description and review mode: playbook settings, not bullets, so no version."""
    with write_session() as s:
        pb = s.get(Playbook, pid)
        if pb is None:
            raise not_found("Playbook")
        for k, v in changes.items():
            setattr(pb, k, v)
        pb.modified_at = utcnow()
        s.add(pb)
        s.flush()
        return pb


@playbooks.patch("/{playbook_id}", response_model=PlaybookEnvelope)
def update_playbook(pb: PlaybookDep, body: UpdatePlaybookIn) -> PlaybookEnvelope:
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.description is not None:
        changes["description"] = body.description
    if "review_mode" in body.model_fields_set:
        changes["review_mode"] = body.review_mode
    return PlaybookEnvelope(playbook=playbook_out(update_playbook_row(pb.id, changes) if changes else pb))


@bullets.get("", response_model=BulletsEnvelope)
def list_bullets(pb: PlaybookDep, section: Optional[str] = Query(None, max_length=200),
                 include_removed: bool = False) -> BulletsEnvelope:
    with read_session() as s:
        stmt = select(Bullet).where(Bullet.playbook_id == pb.id)
        if not include_removed:
            stmt = stmt.where(Bullet.status == "active")
        if section:
            stmt = stmt.where(Bullet.section == normalize_section(section))
        rows = list(s.exec(stmt.order_by(Bullet.pk)))  # type: ignore[arg-type]
    return BulletsEnvelope(bullets=[bullet_out(b) for b in rows])


@bullets.post("", response_model=BulletEnvelope, status_code=201)
def create_bullet(pb: PlaybookDep, body: CreateBulletIn) -> BulletEnvelope:
    """A near-duplicate of an existing bullet tags that one helpful instead (the playbook's dedup rule)."""
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, None, {
        "type": "ADD", "content": body.content, "section": body.section, "justification": "added over the API"})))


@bullets.post("/retrieve", response_model=RetrieveOut)
def retrieve_bullets(pb: PlaybookDep, body: RetrieveIn) -> RetrieveOut:
    """Ranked: BM25 over the bullet text blended with the helpful/harmful counters."""
    hits = P.retrieve(pb.id, body.user_message, body.k)
    return RetrieveOut(retrieved_bullets=[RetrievedBulletOut(**bullet_out(h.bullet).model_dump(), score=h.score,
                                                             scores=h.scores) for h in hits])


@bullets.get("/{bullet_id}", response_model=BulletEnvelope)
def get_bullet(pb: PlaybookDep, bullet_id: BulletId) -> BulletEnvelope:
    b = P.get_bullet(pb.id, bullet_id)
    if b is None:
        raise not_found("Bullet")
    return BulletEnvelope(bullet=bullet_out(b))


@bullets.patch("/{bullet_id}/content", response_model=BulletEnvelope)
def update_bullet_content(pb: PlaybookDep, bullet_id: BulletId, body: ContentIn) -> BulletEnvelope:
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
        "type": "UPDATE", "bullet_id": bullet_id, "content": body.content})))


@bullets.patch("/{bullet_id}", response_model=BulletEnvelope)
def edit_bullet(pb: PlaybookDep, bullet_id: BulletId, body: EditBulletIn) -> BulletEnvelope:
    """Change content and/or section (moving a bullet to another section)."""
    b = live_bullet(pb.id, bullet_id)
    if body.content is None and body.section is None:
        return BulletEnvelope(bullet=bullet_out(b))
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
        "type": "UPDATE", "bullet_id": bullet_id, "content": body.content if body.content is not None else b.content,
        "section": body.section})))


@bullets.delete("/{bullet_id}", response_model=BulletEnvelope)
def delete_bullet(pb: PlaybookDep, bullet_id: BulletId) -> BulletEnvelope:
    """Soft delete: the bullet stays in history and any version can bring it back."""
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {"type": "REMOVE", "bullet_id": bullet_id})))


def _increment(tag: str) -> Callable[..., BulletEnvelope]:
    def handler(pb: PlaybookDep, bullet_id: BulletId) -> BulletEnvelope:
        return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
            "type": "TAG", "bullet_id": bullet_id, "tag": tag})))

    handler.__name__ = f"increment_{tag}"
    handler.__doc__ = f"Add one to the bullet's {tag}_count (a new playbook version)."
    return handler


for _tag in ("helpful", "harmful", "neutral"):
    bullets.post(f"/{{bullet_id}}/increment_{_tag}", response_model=BulletEnvelope)(_increment(_tag))


@learning.post("", response_model=LearnStarted)
def start_learn(pb: PlaybookDep, body: LearnIn) -> LearnStarted:
    """Queue reflect + curate for a finished run; answers at once with the job id."""
    payload = {"playbook_id": pb.id, **body.model_dump()}
    return LearnStarted(learn_job_id=jobs.enqueue("learn", payload))


@learning.get("/{learn_job_id}", response_model=LearnJobEnvelope)
def get_learn_job(pb: PlaybookDep, learn_job_id: JobId) -> LearnJobEnvelope:
    return LearnJobEnvelope(learn_job=learn_job_out(learn_job(pb.id, learn_job_id)))


@learning.post("/{learn_job_id}/retry", response_model=LearnJobEnvelope, responses={409: {"description": "not failed"}})
def retry_learn_job(pb: PlaybookDep, learn_job_id: JobId) -> LearnJobEnvelope:
    """Queue a failed learn job again, e.g. once the model server is back."""
    learn_job(pb.id, learn_job_id)
    try:
        jobs.retry(learn_job_id)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return LearnJobEnvelope(learn_job=learn_job_out(learn_job(pb.id, learn_job_id)))


@review.get("/sections", response_model=SectionsEnvelope)
def list_sections(pb: PlaybookDep) -> SectionsEnvelope:
    with read_session() as s:
        rows = s.exec(select(Bullet.section, func.count()).where(  # type: ignore[call-overload]
            Bullet.playbook_id == pb.id, Bullet.status == "active").group_by(Bullet.section).order_by(Bullet.section))
        return SectionsEnvelope(sections=[SectionOut(name=n, bullet_count=c) for n, c in rows])


@review.get("/versions", response_model=VersionsEnvelope)
def list_versions(pb: PlaybookDep) -> VersionsEnvelope:
    return VersionsEnvelope(current_version=pb.current_version,
                            versions=[VersionOut.model_validate(v, from_attributes=True)
                                      for v in versions.list_versions(pb.id)])


@review.get("/versions/{number}", response_model=VersionEnvelope)
def get_version(pb: PlaybookDep, number: VersionNo) -> VersionEnvelope:
    """The version's record and the active bullets as they were then."""
    check_version(pb, number)
    v = versions.get_version(pb.id, number)
    if v is None:
        raise not_found("Version")
    return VersionEnvelope(version=VersionOut.model_validate(v, from_attributes=True),
                           bullets=[state_out(st) for st in versions.state_at(pb.id, number)])


@review.get("/diff", response_model=DiffEnvelope)
def diff(pb: PlaybookDep, a: int = Query(..., ge=0, le=2**31), b: Optional[int] = Query(None, ge=0, le=2**31)) -> DiffEnvelope:
    """What changed from version a to version b (default: the current one)."""
    b = pb.current_version if b is None else b
    check_version(pb, a)
    check_version(pb, b)
    d = versions.diff_versions(pb.id, a, b)
    return DiffEnvelope(diff=DiffOut(playbook_id=pb.id, a=a, b=b, added=[state_out(x) for x in d.added],
                                     removed=[state_out(x) for x in d.removed],
                                     changed=[ChangedOut(before=state_out(x), after=state_out(y)) for x, y in d.changed]))


@review.post("/versions/{number}/restore", response_model=RestoreOut)
def restore(pb: PlaybookDep, number: VersionNo) -> RestoreOut:
    """Make the playbook look as it did then, as a new version (history is kept)."""
    check_version(pb, number)
    new = versions.restore_version(pb.id, number, actor="api")
    pb2 = P.get_playbook(pb.id)
    assert pb2 is not None
    return RestoreOut(version=new, playbook=playbook_out(pb2))


@review.get("/export", responses={200: {"content": {"application/json": {}, "text/markdown": {}}}})
def export(pb: PlaybookDep, format: Literal["json", "markdown"] = "json") -> Response:
    """Lossless JSON (for import elsewhere) or readable Markdown."""
    if format == "markdown":
        return Response(portability.export_markdown(pb.id), media_type="text/markdown; charset=utf-8")
    return Response(portability.export_json(pb.id), media_type="application/json")


@review.post("/import", response_model=ImportOut, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}}, "text/plain": {"schema": {"type": "string"}}}}})
async def import_(playbook_id: PlaybookId, request: Request, replace: bool = False) -> ImportOut:
    """Our JSON export, a kayba skillbook JSON, or an ace-agent text playbook; one version, all or nothing."""
    data = await request.body()
    n, version = await run_in_threadpool(portability.import_playbook, playbook_id, data, replace, "api")
    pb = await run_in_threadpool(P.get_playbook, playbook_id)
    assert pb is not None
    return ImportOut(imported=n, version=version, playbook=playbook_out(pb))


@review.get("/deltas", response_model=DeltasEnvelope)
def list_deltas(pb: PlaybookDep, status: Optional[Literal["pending", "applied", "partially_applied", "rejected"]] = None,
                limit: int = Query(50, ge=1, le=500)) -> DeltasEnvelope:
    """Newest first; `status=pending` is the review queue."""
    with read_session() as s:
        stmt = select(Delta).where(Delta.playbook_id == pb.id)
        if status:
            stmt = stmt.where(Delta.status == status)
        ds = list(s.exec(stmt.order_by(Delta.created_at.desc()).limit(limit)))  # type: ignore[attr-defined]
        ops: dict[str, list[DeltaOp]] = {d.id: [] for d in ds}
        if ds:
            for o in s.exec(select(DeltaOp).where(DeltaOp.delta_id.in_(list(ops)))):  # type: ignore[attr-defined]
                ops[o.delta_id].append(o)
    return DeltasEnvelope(deltas=[delta_out(d, ops[d.id]) for d in ds])


@review.post("/deltas", response_model=DeltaEnvelope, status_code=201)
def create_delta(pb: PlaybookDep, body: NewDeltaIn) -> DeltaEnvelope:
    """Propose typed operations for review, or apply them at once (all or nothing)."""
    if body.mode == "apply":
        res = P.apply_delta(pb.id, body, source="api", actor="api")
        return DeltaEnvelope(delta=load_delta(pb.id, res.delta_id), version=res.version)
    return DeltaEnvelope(delta=load_delta(pb.id, P.propose_delta(pb.id, body, source="api")))


@review.get("/deltas/{delta_id}", response_model=DeltaEnvelope)
def get_delta(pb: PlaybookDep, delta_id: DeltaId) -> DeltaEnvelope:
    return DeltaEnvelope(delta=load_delta(pb.id, delta_id))


def decide(pid: str, delta_id: str, decisions: list[P.Decision], actor: str) -> DeltaEnvelope:
    load_delta(pid, delta_id)
    try:
        res = P.decide_ops(delta_id, decisions, actor=actor)
    except DeltaError as exc:
        msg = str(exc)
        raise HTTPException(409 if ("already" in msg or "changed since" in msg) else 422, msg) from None
    return DeltaEnvelope(delta=load_delta(pid, delta_id), version=res.version)


@review.post("/deltas/{delta_id}/decisions", response_model=DeltaEnvelope,
             responses={409: {"description": "already decided, or the bullet changed since"}})
def decide_delta(pb: PlaybookDep, delta_id: DeltaId, body: DecisionsIn) -> DeltaEnvelope:
    """Approve or reject pending ops; the approved ones land together as one version."""
    return decide(pb.id, delta_id, [P.Decision(d.op_id, d.approve, d.note, d.content) for d in body.decisions],
                  body.actor)


@review.post("/deltas/{delta_id}/ops/{op_id}/approve", response_model=DeltaEnvelope)
def approve_op(pb: PlaybookDep, delta_id: DeltaId, op_id: int, body: Optional[OpDecisionIn] = None) -> DeltaEnvelope:
    body = body or OpDecisionIn()
    return decide(pb.id, delta_id, [P.Decision(op_id, True, body.note, body.content)], body.actor)


@review.post("/deltas/{delta_id}/ops/{op_id}/reject", response_model=DeltaEnvelope)
def reject_op(pb: PlaybookDep, delta_id: DeltaId, op_id: int, body: Optional[OpDecisionIn] = None) -> DeltaEnvelope:
    body = body or OpDecisionIn()
    return decide(pb.id, delta_id, [P.Decision(op_id, False, body.note)], body.actor)


# ------------------------------------------------------------------ the app


def create_app(start_worker: Optional[bool] = None, settings: Optional[Settings] = None) -> FastAPI:
    """The service; `start_worker` (default: ACE_WORKER_IN_APP) runs learn jobs in this process."""
    settings = settings or get_settings()
    run_worker = settings.worker_in_app if start_worker is None else start_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(get_engine)  # migrate now, not on the first request
        if run_worker:
            import core.worker  # noqa: F401  (fail here, loudly, if a job kind is missing)

            jobs.ensure_background_worker()
        threading.Thread(target=_warm_indexes, name="ace-warm", daemon=True).start()
        yield

    app = FastAPI(title="ACE Service API", version=VERSION, lifespan=lifespan, description=(
        "Agentic Context Engineering as a service: `embed_prompt` before inference, `episodes/learn` after a run. "
        "Compatible with the reference ACE service; adds versions, diffs, review of pending deltas, export "
        "and import. When ACE_SERVICE_TOKEN is set, send `Authorization: Bearer <token>`."))

    @app.get("/health", response_model=HealthOut, tags=["Service"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": VERSION, "llm_configured": settings.llm_configured,
                "worker": run_worker, "auth": bool(settings.service_token)}

    for router in (prompts, playbooks, bullets, learning, review):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(explain(exc.errors()))}, 422)

    @app.exception_handler(DeltaError)
    async def delta_error(_: Request, exc: DeltaError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(OperationalError)
    async def db_busy(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return JSONResponse({"detail": "database busy or unavailable; retry shortly"}, 503)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, 500)

    import_max = max(settings.service_max_body_bytes, portability.MAX_IMPORT_BYTES)
    app.add_middleware(Guard, token=settings.service_token, max_body=settings.service_max_body_bytes,  # type: ignore[arg-type]
                       import_max=import_max)
    app.add_middleware(CORSMiddleware, allow_origins=cors_origins(settings), allow_credentials=True,  # type: ignore[arg-type]
                       allow_methods=["*"], allow_headers=["*"])
    return app


def _warm_indexes() -> None:
    """Build each playbook's in-memory retrieval index now, not on an agent's first request."""
    from core.retrieval import search as retrieval

    for pb in P.list_playbooks():
        try:
            retrieval.warm(pb.id)
        except Exception:  # a cold index only costs the first request some time
            log.warning("could not warm the retrieval index of %s", pb.id, exc_info=True)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True) -> None:
    """`ace serve`: uvicorn on host:port (127.0.0.1 by default; 0.0.0.0 exposes it)."""
    import uvicorn

    if workers > 1:
        uvicorn.run("core.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=access_log)
    else:
        uvicorn.run(create_app(), host=host, port=port, access_log=access_log)
