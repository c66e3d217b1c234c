"""Playbook versions: list, state at a version, diff any two, restore.

Each version stores a revision only for the bullets its delta touched (copy
on write); the state at version N is, per bullet, its latest revision at or
before N. That keeps 200 versions of a 5,000-bullet playbook small.
"""

from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from core.playbook.applier import Applier
from core.playbook.ops import DeltaError
from core.playbook.store import ensure_playbook
from core.storage.db import read_session, write_session
from core.storage.models import Bullet, BulletRevision, Delta, PlaybookVersion, utcnow


@dataclass(frozen=True)
class BulletState:
    bullet_id: str
    section: str
    content: str
    helpful: int
    harmful: int
    neutral: int
    status: str


@dataclass
class VersionDiff:
    playbook_id: str
    a: int
    b: int
    added: list[BulletState] = field(default_factory=list)
    removed: list[BulletState] = field(default_factory=list)
    changed: list[tuple[BulletState, BulletState]] = field(default_factory=list)  # (before, after)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def list_versions(playbook_id: str) -> list[PlaybookVersion]:
    with read_session() as s:
        stmt = select(PlaybookVersion).where(PlaybookVersion.playbook_id == playbook_id)
        return list(s.exec(stmt.order_by(PlaybookVersion.number.desc())))  # type: ignore[attr-defined]


def _state_at(s: Session, playbook_id: str, number: int) -> dict[int, BulletState]:
    latest = (select(BulletRevision.bullet_pk, func.max(BulletRevision.version).label("v"))
              .where(BulletRevision.playbook_id == playbook_id, BulletRevision.version <= number)
              .group_by(col(BulletRevision.bullet_pk)).subquery())
    stmt = select(BulletRevision).join(latest, and_(col(BulletRevision.bullet_pk) == latest.c.bullet_pk,
                                                    col(BulletRevision.version) == latest.c.v))
    return {r.bullet_pk: BulletState(r.bullet_id, r.section, r.content, r.helpful, r.harmful, r.neutral, r.status)
            for r in s.exec(stmt)}


def state_at(playbook_id: str, number: int) -> list[BulletState]:
    """The active bullets as they were at version `number`."""
    with read_session() as s:
        return [st for _, st in sorted(_state_at(s, playbook_id, number).items()) if st.status == "active"]


def diff_versions(playbook_id: str, a: int, b: int) -> VersionDiff:
    with read_session() as s:
        sa, sb = _state_at(s, playbook_id, a), _state_at(s, playbook_id, b)
    diff = VersionDiff(playbook_id, a, b)
    for pk in sorted(set(sa) | set(sb)):
        x, y = sa.get(pk), sb.get(pk)
        x_live = x is not None and x.status == "active"
        y_live = y is not None and y.status == "active"
        if y_live and not x_live:
            diff.added.append(y)  # type: ignore[arg-type]
        elif x_live and not y_live:
            diff.removed.append(x)  # type: ignore[arg-type]
        elif x_live and y_live and x != y:
            diff.changed.append((x, y))  # type: ignore[arg-type]
    return diff


def restore_version(playbook_id: str, number: int, actor: str = "user") -> int:
    """Make the playbook look as it did at `number`, as a new version."""

    with write_session() as s:
        pb = ensure_playbook(s, playbook_id)
        if number < 0 or number > pb.current_version:
            raise DeltaError(f"playbook {playbook_id!r} has no version {number} (latest is {pb.current_version})")
        target = _state_at(s, playbook_id, number)
        delta = Delta(playbook_id=playbook_id, reasoning=f"restore version {number}", source="restore",
                      status="applied", base_version=pb.current_version, decided_at=utcnow())
        s.add(delta)
        s.flush()
        ap = Applier(s, pb, None, delta.id)
        bullets = s.exec(select(Bullet).where(Bullet.playbook_id == playbook_id)).all()
        changed = 0
        for b in bullets:
            want = target.get(b.pk)  # type: ignore[arg-type]
            state = (want.section, want.content, want.helpful, want.harmful, want.neutral, want.status) if want \
                else (b.section, b.content, b.helpful, b.harmful, b.neutral, "removed")
            if (b.section, b.content, b.helpful, b.harmful, b.neutral, b.status) == state:
                continue
            ap.touch(b)
            was_active = b.status == "active"
            b.section, b.content, b.helpful, b.harmful, b.neutral, b.status = state
            if b.status == "active":
                b.merged_into = None
            ap.count_change += (b.status == "active") - was_active
            b.updated_at = utcnow()
            ap.mark(b)
            changed += 1
        delta.version = ap.finish(f"restored version {number} ({changed} bullets changed)")
        return delta.version


def get_version(playbook_id: str, number: int) -> Optional[PlaybookVersion]:
    with read_session() as s:
        return s.exec(select(PlaybookVersion).where(PlaybookVersion.playbook_id == playbook_id,
                                                    PlaybookVersion.number == number)).first()
