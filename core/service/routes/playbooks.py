"""Playbooks: list, create, read and edit their settings (settings are not bullets, so no new version)."""

import uuid
from typing import Any

from fastapi import APIRouter

from core import playbook as P
from core.errors import Conflict, NotFound
from core.service.errors import responses
from core.service.mappers import playbook_out
from core.service.params import PlaybookDep
from core.service.schemas import CreatePlaybookIn, PlaybookEnvelope, PlaybooksEnvelope, UpdatePlaybookIn
from core.storage.db import write_session
from core.storage.models import Playbook, utcnow

router = APIRouter(prefix="/playbooks", tags=["Playbooks"])


@router.get("", response_model=PlaybooksEnvelope)
def list_playbooks() -> PlaybooksEnvelope:
    return PlaybooksEnvelope(playbooks=[playbook_out(p) for p in P.list_playbooks()])


@router.post("", response_model=PlaybookEnvelope, status_code=201, responses=responses(409, e409="The id is taken"))
def create_playbook(body: CreatePlaybookIn) -> PlaybookEnvelope:
    pid = body.id or str(uuid.uuid4())
    if body.id and P.get_playbook(pid) is not None:
        raise Conflict(f"Playbook {pid!r} already exists")
    P.get_or_create_playbook(pid, name=body.name, environment=body.environment, description=body.description or "")
    pb = update_playbook_row(pid, {"review_mode": body.review_mode}) if body.review_mode else P.get_playbook(pid)
    assert pb is not None
    return PlaybookEnvelope(playbook=playbook_out(pb))


@router.get("/{playbook_id}", response_model=PlaybookEnvelope)
def get_playbook(pb: PlaybookDep) -> PlaybookEnvelope:
    return PlaybookEnvelope(playbook=playbook_out(pb))


def update_playbook_row(pid: str, changes: dict[str, Any]) -> Playbook:
    """Name, description and review mode: playbook settings, not bullets, so no version."""
    with write_session() as s:
        pb = P.lock_playbook(s, pid)
        if pb is None:
            raise NotFound("Playbook not found")
        for k, v in changes.items():
            setattr(pb, k, v)
        pb.modified_at = utcnow()
        s.add(pb)
        s.flush()
        return pb


@router.patch("/{playbook_id}", response_model=PlaybookEnvelope)
def update_playbook(pb: PlaybookDep, body: UpdatePlaybookIn) -> PlaybookEnvelope:
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.description is not None:
        changes["description"] = body.description
    if "review_mode" in body.model_fields_set:
        changes["review_mode"] = body.review_mode
    return PlaybookEnvelope(playbook=playbook_out(update_playbook_row(pb.id, changes) if changes else pb))
