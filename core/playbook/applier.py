"""Applying delta operations to bullets inside one transaction, as one new version."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import event
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from core.config import get_settings
from core.playbook.dedup import near_duplicate
from core.playbook.lines import bullet_line
from core.playbook.ops import (
    DEFAULT_SECTION,
    BulletMissing,
    DeltaConflict,
    DeltaError,
    OpIn,
    check_content,
    normalize_section,
)
from core.playbook.store import ENV_PREFIX
from core.retrieval import bullets_where, detached_copy, index_committed
from core.retrieval.embeddings import embed_after_write
from core.storage.db import after_session, connection_writer
from core.storage.models import Bullet, BulletRevision, Delta, Playbook, PlaybookVersion, utcnow
from core.tokens import estimate_tokens


@dataclass
class OpResult:
    type: str
    bullet_id: Optional[str]
    note: str = ""


@dataclass
class ApplyResult:
    delta_id: str
    version: Optional[int]
    results: list[OpResult] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (op index, error)


def _line_tokens(b: Bullet) -> int:
    return estimate_tokens(bullet_line(b)) if b.status == "active" else 0


_MUTABLE = ("section", "content", "helpful", "harmful", "neutral", "status", "merged_into", "updated_at")
BULLETS = Bullet.__table__  # type: ignore[attr-defined]
PLAYBOOKS = Playbook.__table__  # type: ignore[attr-defined]
REVISIONS = BulletRevision.__table__  # type: ignore[attr-defined]
DELTAS = Delta.__table__  # type: ignore[attr-defined]


class Applier:
    """Applies ops inside one transaction, remembering what it touched.

    Bullets it changes are taken out of the session and written by `finish` with plain statements
    (only the columns that changed, so a counter tag never re-indexes the text): the unit of work
    never tracks them, and never flushes them half way through a delta.
    """

    def __init__(self, session: Session, pb: Playbook, episode_id: Optional[str], delta_id: str,
                 dedup_within: bool = False):
        """`dedup_within`: an ADD that repeats an ADD earlier in the same delta also becomes a TAG
        (the Curator's deltas); a person's explicit delta keeps both."""
        self.s, self.pb, self.episode_id, self.delta_id = session, pb, episode_id, delta_id
        self.dedup_within = dedup_within
        self.created: set[int] = set()  # id() of the bullets this delta made
        self.touched: dict[int, Bullet] = {}
        self.tokens_before: dict[int, int] = {}
        self.stored: dict[int, tuple[Any, ...]] = {}  # id() -> the mutable columns as stored, for existing bullets
        self.count_change = 0
        self.threshold = get_settings().dedup_threshold
        self.cache: dict[str, Bullet] = {}

    def snapshot(self) -> tuple[Any, ...]:
        return dict(self.touched), dict(self.tokens_before), self.count_change, dict(self.cache), set(self.created)

    def restore(self, state: tuple[Any, ...]) -> None:
        """Undo the bookkeeping of a rejected op (which changed no row: `apply` checks before it changes)."""
        self.touched, self.tokens_before, self.cache = dict(state[0]), dict(state[1]), dict(state[3])
        self.count_change, self.created = state[2], set(state[4])

    def preload(self, ops: Sequence[OpIn], known: Optional[dict[str, Bullet]] = None) -> None:
        """Fetch every bullet the ops name in one query instead of one (plus an autoflush) each;
        `known`: those bullets, when the caller has just loaded them."""
        self.cache.update(known if known is not None else load_bullets(self.s, self.pb.id, named_ids(ops)))

    def touch(self, b: Bullet) -> None:
        """Remember a bullet's rendered size and stored state before its first change."""
        if id(b) not in self.tokens_before:
            self.tokens_before[id(b)] = _line_tokens(b)
            self.stored[id(b)] = tuple(getattr(b, c) for c in _MUTABLE)
            self.cache[b.id] = b  # every later op that names it must find this object, not reload it
            if b in self.s:
                self.s.expunge(b)  # finish() writes it

    def mark(self, b: Bullet) -> None:
        """Record that `b` changed: it gets a revision in the new version."""
        self.touched[id(b)] = b

    def _fetch(self, *criteria: Any) -> Optional[Bullet]:
        """One bullet of this playbook, detached (the session never tracks what finish() writes)."""
        found = bullets_where(self.s.connection(), BULLETS.c.playbook_id == self.pb.id, *criteria)
        return found[0] if found else None

    def _resolve(self, ref: Bullet | int) -> Optional[Bullet]:
        """A near-duplicate `_near_duplicate` named (an object, or a pk): the object this delta
        already holds for it, else a fresh one."""
        if isinstance(ref, Bullet):
            return ref
        held = next((b for b in self.cache.values() if b.pk == ref), None)
        return held or self._fetch(BULLETS.c.pk == ref)

    def _live(self, bullet_id: Optional[str], what: str) -> Bullet:
        b = self.cache.get(bullet_id or "") or self._fetch(BULLETS.c.id == (bullet_id or ""))
        if b is None:
            raise BulletMissing(f"{what}: bullet {bullet_id!r} does not exist in playbook {self.pb.id!r}")
        if b.status != "active":
            raise BulletMissing(f"{what}: bullet {bullet_id!r} was removed" +
                                (f" (merged into {b.merged_into})" if b.merged_into else ""))
        return b

    def new_bullet(self, section: Optional[str], content: str, helpful: int = 0, harmful: int = 0,
                    neutral: int = 0, bullet_id: Optional[str] = None, check_id: bool = True) -> Bullet:
        if bullet_id is None:
            prefix = ENV_PREFIX.get(self.pb.environment, "b")
            bullet_id = f"{prefix}-{self.pb.next_seq:05d}"
            self.pb.next_seq += 1
        elif check_id and (bullet_id in self.cache or self._fetch(BULLETS.c.id == bullet_id) is not None):
            raise DeltaError(f"bullet id {bullet_id!r} already exists in playbook {self.pb.id!r}")
        b = Bullet(id=bullet_id, playbook_id=self.pb.id, section=normalize_section(section or DEFAULT_SECTION),
                   content=content, helpful=helpful, harmful=harmful, neutral=neutral,
                   source_episode_id=self.episode_id, source_delta_id=self.delta_id)
        self.tokens_before[id(b)] = 0
        self.created.add(id(b))
        self.cache[bullet_id] = b
        self.mark(b)
        self.count_change += 1
        return b

    def apply(self, i: int, op: OpIn, before: Optional[str] = None) -> OpResult:
        what = f"operation {i + 1} ({op.type})"
        now = utcnow()
        if op.type == "ADD":
            content = check_content(op.content)
            # Bullets this delta already touched are judged as they are now (removed, merged or
            # rewritten ones are not duplicates any more); the index and FTS5 know only committed rows.
            touched = list(self.touched.values())
            local = [b for b in touched if b.status == "active" and (self.dedup_within or id(b) not in self.created)]
            dup = near_duplicate(self.s, self.pb, content, self.threshold, local,
                                  {b.pk for b in touched if b.pk is not None})
            found = self._resolve(dup[0]) if dup is not None else None
            if found is not None:
                b, score = found, dup[1]  # type: ignore[index]
                self.touch(b)
                b.helpful += 1
                b.updated_at = now
                self.mark(b)
                return OpResult("TAG", b.id, f"near-duplicate of {b.id} (similarity {score:.2f}): "
                                             "tagged helpful instead of adding")
            b = self.new_bullet(op.section, content)
            return OpResult("ADD", b.id)
        if op.type == "MERGE":
            sources = [self._live(bid, what) for bid in op.bullet_ids]
            merged = self.new_bullet(op.section or sources[0].section, check_content(op.content),
                                      sum(b.helpful for b in sources), sum(b.harmful for b in sources),
                                      sum(b.neutral for b in sources))
            for b in sources:
                self.touch(b)
                b.status, b.merged_into, b.updated_at = "removed", merged.id, now
                self.mark(b)
                self.count_change -= 1
            return OpResult("MERGE", merged.id, f"merged {', '.join(op.bullet_ids)}")
        b = self._live(op.bullet_id, what)
        self.touch(b)
        if op.type == "UPDATE":
            if before is not None and b.content != before:
                raise DeltaConflict(f"{what}: bullet {b.id} changed since this update was proposed; review it again")
            b.content = check_content(op.content)
            if op.section:
                b.section = normalize_section(op.section)
        elif op.type == "TAG":
            setattr(b, op.tag, getattr(b, op.tag) + 1)  # type: ignore[arg-type]
        elif op.type == "REMOVE":
            b.status = "removed"
            self.count_change -= 1
        b.updated_at = now
        self.mark(b)
        return OpResult(op.type, b.id)

    def finish(self, summary: str) -> int:
        """Write the touched bullets, their revisions and the new version."""
        pb = self.pb
        w = connection_writer(self.s.connection())
        prev = w.row("SELECT bullet_count, token_count FROM playbookversion WHERE playbook_id = ? AND number = ?",
                     (pb.id, pb.current_version))
        assert prev is not None, "every playbook has a row for its current version"
        prev_count, prev_tokens = prev
        number = pb.current_version + 1
        token_delta = 0
        revisions = []
        for key, b in self.touched.items():
            if key in self.created:
                b.pk = w.insert_one(b)
            else:
                was = self.stored.get(key)
                changed = {c: v for c, v, old in zip(_MUTABLE, (getattr(b, c) for c in _MUTABLE), was or ())
                           if v != old} if was is not None else {c: getattr(b, c) for c in _MUTABLE}
                w.update(BULLETS, {"pk": b.pk}, changed)
            token_delta += _line_tokens(b) - self.tokens_before.get(key, 0)
            revisions.append({"playbook_id": pb.id, "bullet_pk": b.pk, "bullet_id": b.id, "version": number,
                              "section": b.section, "content": b.content, "helpful": b.helpful,
                              "harmful": b.harmful, "neutral": b.neutral, "status": b.status})
        w.insert(REVISIONS, revisions)  # plain dicts: every column is given, none has a default
        w.add([PlaybookVersion(
            playbook_id=pb.id, number=number, parent=pb.current_version, delta_id=self.delta_id,
            summary=summary[:500], bullet_count=prev_count + self.count_change,
            token_count=max(0, prev_tokens + token_delta))])
        now = utcnow()
        w.update(PLAYBOOKS, {"id": pb.id}, {"current_version": number, "next_seq": pb.next_seq, "modified_at": now})
        for attr, value in (("current_version", number), ("next_seq", pb.next_seq), ("modified_at", now)):
            set_committed_value(pb, attr, value)  # as stored: nothing left for the unit of work to flush
        _embed_after_commit(self.s, [b.pk for b in self.touched.values() if b.pk is not None])
        _index_after_commit(self.s, pb.id, number - 1, number, list(self.touched.values()))
        return number


def _embed_after_commit(session: Session, pks: list[int]) -> None:
    """Embed the touched bullets once (and only if) this transaction commits, after the session has given
    its connection back; never on the query path."""
    if not pks or get_settings().embedder == "none":
        return
    after_session(session, lambda: embed_after_write(pks))


def _index_after_commit(session: Session, playbook_id: str, old: int, new: int, bullets: list[Bullet]) -> None:
    """Once this transaction commits, move the in-memory retrieval index to the new version with the
    bullets it wrote (copied now, as stored)."""
    copies = [detached_copy(b) for b in bullets if b.pk is not None]
    bind = session.get_bind()
    url = str(bind.url)  # type: ignore[union-attr]  # the index's key (password masked, as everywhere)
    event.listen(session, "after_commit",
                 lambda _s: index_committed(url, playbook_id, old, new, copies, bind.dialect), once=True)


def summary_of(results: Sequence[OpResult]) -> str:
    """A version's one-line summary: how many ops of each type landed."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.type] = counts.get(r.type, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in counts.items()) or "no change"


def named_ids(ops: Sequence[OpIn]) -> set[str]:
    """Every bullet id the ops refer to, to load them in one query."""
    return {i for op in ops for i in ([op.bullet_id] if op.bullet_id else []) + list(op.bullet_ids)}


def load_bullets(s: Session, playbook_id: str, ids: set[str]) -> dict[str, Bullet]:
    """The named bullets, detached: the applier writes them itself."""
    if not ids:
        return {}
    return {b.id: b for b in bullets_where(s.connection(), BULLETS.c.playbook_id == playbook_id,
                                           BULLETS.c.id.in_(ids))}
