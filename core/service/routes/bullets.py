"""Bullets: every change goes through one delta op, so it becomes a playbook version like any other."""

from collections.abc import Callable
from typing import Any, Optional

from fastapi import APIRouter, Query
from sqlmodel import select

from core import playbook as P
from core.errors import NotFound
from core.playbook.ops import BulletMissing, normalize_section
from core.service.errors import responses
from core.service.mappers import bullet_out
from core.service.params import BulletId, PlaybookDep
from core.service.schemas import (
    BulletEnvelope,
    BulletsEnvelope,
    ContentIn,
    CreateBulletIn,
    EditBulletIn,
    RetrievedBulletOut,
    RetrieveIn,
    RetrieveOut,
)
from core.storage.db import read_session
from core.storage.models import Bullet

router = APIRouter(prefix="/playbooks/{playbook_id}/bullets", tags=["Bullets"])
NOT_FOUND = responses(404, e404="No such bullet, or it was removed")
BULLET_LOC = ("path", "bullet_id")


def live_bullet(pid: str, bid: str) -> Bullet:
    b = P.get_bullet(pid, bid)
    if b is None or b.status != "active":
        raise NotFound("Bullet not found", loc=BULLET_LOC)
    return b


def change_bullet(pid: str, bid: Optional[str], op: dict[str, Any]) -> Bullet:
    """One op through apply_delta, so the change is a new version like any other."""
    if bid is not None:
        live_bullet(pid, bid)
    try:
        res = P.apply_delta(pid, [op], source="api", actor="api")
    except BulletMissing:
        if bid is None:
            raise
        # removed since the check above: the URL names the bullet, so it is not found (404), not a bad delta
        raise NotFound("Bullet not found", loc=BULLET_LOC) from None
    b = P.get_bullet(pid, res.results[0].bullet_id or "")
    assert b is not None
    return b


@router.get("", response_model=BulletsEnvelope)
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


@router.post("", response_model=BulletEnvelope, status_code=201)
def create_bullet(pb: PlaybookDep, body: CreateBulletIn) -> BulletEnvelope:
    """A near-duplicate of an existing bullet tags that one helpful instead (the playbook's dedup rule)."""
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, None, {
        "type": "ADD", "content": body.content, "section": body.section, "justification": "added over the API"})))


@router.post("/retrieve", response_model=RetrieveOut)
def retrieve_bullets(pb: PlaybookDep, body: RetrieveIn) -> RetrieveOut:
    """Ranked: BM25 over the bullet text blended with the helpful/harmful counters."""
    hits = P.retrieve(pb.id, body.user_message, body.k)
    return RetrieveOut(retrieved_bullets=[RetrievedBulletOut(**bullet_out(h.bullet).model_dump(), score=h.score,
                                                             scores=h.scores) for h in hits])


@router.get("/{bullet_id}", response_model=BulletEnvelope, responses=NOT_FOUND)
def get_bullet(pb: PlaybookDep, bullet_id: BulletId, include_removed: bool = Query(
        False, description="also answer for a removed bullet (with `status: removed`)")) -> BulletEnvelope:
    """The bullet; a removed one (deleted, or merged into another) is 404 unless `include_removed=true`.
    Removed bullets stay in the playbook's history: any version can bring them back."""
    b = P.get_bullet(pb.id, bullet_id)
    if b is None or (b.status != "active" and not include_removed):
        raise NotFound("Bullet not found", loc=BULLET_LOC)
    return BulletEnvelope(bullet=bullet_out(b))


@router.patch("/{bullet_id}/content", response_model=BulletEnvelope, responses=NOT_FOUND)
def update_bullet_content(pb: PlaybookDep, bullet_id: BulletId, body: ContentIn) -> BulletEnvelope:
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
        "type": "UPDATE", "bullet_id": bullet_id, "content": body.content})))


@router.patch("/{bullet_id}", response_model=BulletEnvelope, responses=NOT_FOUND)
def edit_bullet(pb: PlaybookDep, bullet_id: BulletId, body: EditBulletIn) -> BulletEnvelope:
    """Change content and/or section (moving a bullet to another section)."""
    b = live_bullet(pb.id, bullet_id)
    if body.content is None and body.section is None:
        return BulletEnvelope(bullet=bullet_out(b))
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
        "type": "UPDATE", "bullet_id": bullet_id, "content": body.content if body.content is not None else b.content,
        "section": body.section})))


@router.delete("/{bullet_id}", response_model=BulletEnvelope, responses=NOT_FOUND)
def delete_bullet(pb: PlaybookDep, bullet_id: BulletId) -> BulletEnvelope:
    """Soft delete: the bullet stays in history and any version can bring it back; GET answers 404 for it
    from now on, unless asked with `include_removed=true`."""
    return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
        "type": "REMOVE", "bullet_id": bullet_id})))


def _increment(tag: str) -> Callable[..., BulletEnvelope]:
    def handler(pb: PlaybookDep, bullet_id: BulletId) -> BulletEnvelope:
        return BulletEnvelope(bullet=bullet_out(change_bullet(pb.id, bullet_id, {
            "type": "TAG", "bullet_id": bullet_id, "tag": tag})))

    handler.__name__ = f"increment_{tag}"
    handler.__doc__ = f"Add one to the bullet's {tag}_count (a new playbook version)."
    return handler


for _tag in ("helpful", "harmful", "neutral"):
    router.post(f"/{{bullet_id}}/increment_{_tag}", response_model=BulletEnvelope,
                responses=NOT_FOUND)(_increment(_tag))
