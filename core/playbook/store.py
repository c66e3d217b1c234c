"""Playbooks and their bullets as stored: ids, creation on first use, reads."""

import re
from typing import Optional

from sqlalchemy import func
from sqlmodel import Session, col, select

from core.storage.db import insert_unless_present, read_session, row_values, write_session
from core.storage.models import Bullet, Playbook, PlaybookVersion

PLAYBOOK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_PREFIX = {"python": "py", "javascript": "js", "ml": "ml", "data_analysis": "da"}


def validate_playbook_id(playbook_id: str) -> str:
    if not isinstance(playbook_id, str) or not PLAYBOOK_ID_RE.match(playbook_id):
        raise ValueError(
            f"invalid playbook id {playbook_id!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return playbook_id


def lock_playbook(session: Session, playbook_id: str) -> Optional[Playbook]:
    """The playbook row, locked until this transaction ends (`SELECT ... FOR UPDATE`), read fresh.

    Every change to a playbook (versions, bullet ids, counters) reads the row and writes it back, so on
    PostgreSQL two writers must take turns here; on SQLite the transaction already holds the write lock."""
    # key_share: FOR NO KEY UPDATE, so episodes and other rows that refer to the playbook can still be added
    stmt = select(Playbook).where(Playbook.id == playbook_id).with_for_update(key_share=True)
    return session.exec(stmt.execution_options(populate_existing=True)).first()


def ensure_playbook(session: Session, playbook_id: str, name: Optional[str] = None,
                    environment: Optional[str] = None, description: str = "") -> Playbook:
    """The playbook in this session's transaction, locked, and created (with its version 0) on first use.
    Two processes creating the same id at once both end with the one playbook (INSERT ... ON CONFLICT)."""
    validate_playbook_id(playbook_id)
    pb = lock_playbook(session, playbook_id)
    if pb is None:
        new = Playbook(id=playbook_id, name=name or playbook_id, environment=environment or "general",
                       description=description)
        if insert_unless_present(session.connection(), Playbook.__table__, row_values(new)):  # type: ignore[attr-defined]
            session.add(PlaybookVersion(playbook_id=playbook_id, number=0, summary="created"))
            session.flush()
        pb = lock_playbook(session, playbook_id)
        assert pb is not None, "inserted above, or by a transaction that committed first"
    return pb


def get_or_create_playbook(playbook_id: str, name: Optional[str] = None,
                           environment: Optional[str] = None, description: str = "") -> Playbook:
    """Playbook ids are user strings; the first use creates the playbook."""
    with read_session() as s:
        pb = s.get(Playbook, validate_playbook_id(playbook_id))
        if pb is not None:
            return pb
    with write_session() as s:
        return ensure_playbook(s, playbook_id, name, environment, description)


def get_playbook(playbook_id: str) -> Optional[Playbook]:
    with read_session() as s:
        return s.get(Playbook, playbook_id)


def list_playbooks() -> list[Playbook]:
    with read_session() as s:
        return list(s.exec(select(Playbook).order_by(col(Playbook.created_at))))


def active_bullets(playbook_id: str, session: Optional[Session] = None) -> list[Bullet]:
    def q(s: Session) -> list[Bullet]:
        stmt = select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.status == "active")
        return list(s.exec(stmt.order_by(col(Bullet.pk))))

    if session is not None:
        return q(session)
    with read_session() as s:
        return q(s)


def get_bullet(playbook_id: str, bullet_id: str, session: Optional[Session] = None) -> Optional[Bullet]:
    def q(s: Session) -> Optional[Bullet]:
        return s.exec(select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.id == bullet_id)).first()

    if session is not None:
        return q(session)
    with read_session() as s:
        return q(s)


def count_bullets(playbook_id: str) -> int:
    """Active bullets, counted by the database (the UI shows it for playbooks of any size)."""
    with read_session() as s:
        return int(s.exec(select(func.count()).select_from(Bullet).where(
            Bullet.playbook_id == playbook_id, Bullet.status == "active")).one())
