"""Versions and review: sections, history, diffs, restore, export and import, and pending deltas."""

from typing import Literal, Optional

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import func
from sqlmodel import select

from core import playbook as P
from core.errors import NotFound
from core.playbook import portability, versions
from core.service.errors import responses
from core.service.mappers import delta_out, playbook_out, state_out
from core.service.params import DeltaId, OpId, PlaybookDep, PlaybookId, VersionNo
from core.service.schemas import (
    IMPORT_BODY,
    ChangedOut,
    DecisionsIn,
    DeltaEnvelope,
    DeltaOut,
    DeltasEnvelope,
    DiffEnvelope,
    DiffOut,
    ImportOut,
    NewDeltaIn,
    OpDecisionIn,
    RestoreOut,
    SectionOut,
    SectionsEnvelope,
    VersionEnvelope,
    VersionOut,
    VersionsEnvelope,
)
from core.storage.db import read_session
from core.storage.models import Bullet, Delta, DeltaOp, Playbook

router = APIRouter(prefix="/playbooks/{playbook_id}", tags=["Versions and review"])
NO_VERSION = responses(404, e404="No such version")
NO_DELTA = responses(404, e404="No such delta in this playbook")
DECIDED = responses(404, 409, e404="No such delta in this playbook",
                    e409="The op was already decided, or its bullet changed since it was proposed")


def check_version(pb: Playbook, number: int, loc: tuple[str, str] = ("path", "number")) -> None:
    if number > pb.current_version:
        raise NotFound(f"Version not found: playbook {pb.id!r} has versions 0 to {pb.current_version}", loc=loc)


def load_delta(pid: str, delta_id: str) -> DeltaOut:
    with read_session() as s:
        d = s.get(Delta, delta_id)
        if d is None or d.playbook_id != pid:
            raise NotFound("Delta not found", loc=("path", "delta_id"))
        ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta_id)))
    return delta_out(d, ops)


@router.get("/sections", response_model=SectionsEnvelope)
def list_sections(pb: PlaybookDep) -> SectionsEnvelope:
    with read_session() as s:
        rows = s.exec(select(Bullet.section, func.count()).where(
            Bullet.playbook_id == pb.id, Bullet.status == "active").group_by(Bullet.section).order_by(Bullet.section))
        return SectionsEnvelope(sections=[SectionOut(name=n, bullet_count=c) for n, c in rows])


@router.get("/versions", response_model=VersionsEnvelope)
def list_versions(pb: PlaybookDep) -> VersionsEnvelope:
    return VersionsEnvelope(current_version=pb.current_version,
                            versions=[VersionOut.model_validate(v, from_attributes=True)
                                      for v in versions.list_versions(pb.id)])


@router.get("/versions/{number}", response_model=VersionEnvelope, responses=NO_VERSION)
def get_version(pb: PlaybookDep, number: VersionNo) -> VersionEnvelope:
    """The version's record and the active bullets as they were then."""
    check_version(pb, number)
    v = versions.get_version(pb.id, number)
    if v is None:
        raise NotFound("Version not found", loc=("path", "number"))
    return VersionEnvelope(version=VersionOut.model_validate(v, from_attributes=True),
                           bullets=[state_out(st) for st in versions.state_at(pb.id, number)])


@router.get("/diff", response_model=DiffEnvelope, responses=NO_VERSION)
def diff(pb: PlaybookDep, a: int = Query(..., ge=0, le=2**31),
         b: Optional[int] = Query(None, ge=0, le=2**31)) -> DiffEnvelope:
    """What changed from version a to version b (default: the current one)."""
    b = pb.current_version if b is None else b
    check_version(pb, a, ("query", "a"))
    check_version(pb, b, ("query", "b"))
    d = versions.diff_versions(pb.id, a, b)
    return DiffEnvelope(diff=DiffOut(playbook_id=pb.id, a=a, b=b, added=[state_out(x) for x in d.added],
                                     removed=[state_out(x) for x in d.removed],
                                     changed=[ChangedOut(before=state_out(x), after=state_out(y))
                                              for x, y in d.changed]))


@router.post("/versions/{number}/restore", response_model=RestoreOut, responses=NO_VERSION)
def restore(pb: PlaybookDep, number: VersionNo) -> RestoreOut:
    """Make the playbook look as it did then, as a new version (history is kept)."""
    check_version(pb, number)
    new = versions.restore_version(pb.id, number, actor="api")
    pb2 = P.get_playbook(pb.id)
    assert pb2 is not None
    return RestoreOut(version=new, playbook=playbook_out(pb2))


@router.get("/export", responses={200: {"content": {"application/json": {}, "text/markdown": {}}}})
def export(pb: PlaybookDep, format: Literal["json", "markdown"] = "json") -> Response:
    """Lossless JSON (for import elsewhere) or readable Markdown."""
    if format == "markdown":
        return Response(portability.export_markdown(pb.id), media_type="text/markdown; charset=utf-8")
    return Response(portability.export_json(pb.id), media_type="application/json")


@router.post("/import", response_model=ImportOut, openapi_extra={"requestBody": IMPORT_BODY})
async def import_(playbook_id: PlaybookId, request: Request, replace: bool = False) -> ImportOut:
    """Our JSON export, a kayba skillbook JSON, or an ace-agent text playbook; one version, all or nothing."""
    data = await request.body()
    n, version = await run_in_threadpool(portability.import_playbook, playbook_id, data, replace, "api")
    pb = await run_in_threadpool(P.get_playbook, playbook_id)
    assert pb is not None
    return ImportOut(imported=n, version=version, playbook=playbook_out(pb))


@router.get("/deltas", response_model=DeltasEnvelope)
def list_deltas(pb: PlaybookDep,
                status: Optional[Literal["pending", "applied", "partially_applied", "rejected"]] = None,
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


@router.post("/deltas", response_model=DeltaEnvelope, status_code=201)
def create_delta(pb: PlaybookDep, body: NewDeltaIn) -> DeltaEnvelope:
    """Propose typed operations for review, or apply them at once (all or nothing). Either way every bullet
    an UPDATE, TAG, REMOVE or MERGE names must exist and be active now: otherwise 422 naming the op and the
    id (`loc`: `["body", "operations", i, "bullet_id"]`), and nothing is stored."""
    if body.mode == "apply":
        res = P.apply_delta(pb.id, body, source="api", actor="api")
        return DeltaEnvelope(delta=load_delta(pb.id, res.delta_id), version=res.version)
    return DeltaEnvelope(delta=load_delta(pb.id, P.propose_delta(pb.id, body, source="api")))


@router.get("/deltas/{delta_id}", response_model=DeltaEnvelope, responses=NO_DELTA)
def get_delta(pb: PlaybookDep, delta_id: DeltaId) -> DeltaEnvelope:
    return DeltaEnvelope(delta=load_delta(pb.id, delta_id))


def decide(pid: str, delta_id: str, decisions: list[P.Decision], actor: str) -> DeltaEnvelope:
    """An op already decided or a bullet changed since raises DeltaConflict (409); other delta errors are 422."""
    load_delta(pid, delta_id)
    res = P.decide_ops(delta_id, decisions, actor=actor)
    return DeltaEnvelope(delta=load_delta(pid, delta_id), version=res.version)


@router.post("/deltas/{delta_id}/decisions", response_model=DeltaEnvelope, responses=DECIDED)
def decide_delta(pb: PlaybookDep, delta_id: DeltaId, body: DecisionsIn) -> DeltaEnvelope:
    """Approve or reject pending ops; the approved ones land together as one version."""
    return decide(pb.id, delta_id, [P.Decision(d.op_id, d.approve, d.note, d.content) for d in body.decisions],
                  body.actor)


@router.post("/deltas/{delta_id}/ops/{op_id}/approve", response_model=DeltaEnvelope, responses=DECIDED)
def approve_op(pb: PlaybookDep, delta_id: DeltaId, op_id: OpId, body: Optional[OpDecisionIn] = None) -> DeltaEnvelope:
    body = body or OpDecisionIn()
    return decide(pb.id, delta_id, [P.Decision(op_id, True, body.note, body.content)], body.actor)


@router.post("/deltas/{delta_id}/ops/{op_id}/reject", response_model=DeltaEnvelope, responses=DECIDED)
def reject_op(pb: PlaybookDep, delta_id: DeltaId, op_id: OpId, body: Optional[OpDecisionIn] = None) -> DeltaEnvelope:
    body = body or OpDecisionIn()
    return decide(pb.id, delta_id, [P.Decision(op_id, False, body.note)], body.actor)
