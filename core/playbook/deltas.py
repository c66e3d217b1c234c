"""Playbooks: bullets, delta application, rendering and retrieval.

Every change goes through a delta and makes a new immutable version. A delta
applied with `apply_delta` is all-or-nothing: one bad operation (an unknown or
removed bullet, empty content) raises `DeltaError` and nothing is written.
Deltas that wait for review are decided op by op (`decide_ops`); the approved
ops of one decision are applied together as one version. `auto_apply` (the
loop's auto mode) rejects the individually invalid ops with their error noted
and applies the rest, so one hallucinated bullet id does not discard a whole
reflection's worth of learning.
"""

import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Optional

from rapidfuzz import fuzz
from sqlalchemy import event, func
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from core.config import get_settings
from core.storage.db import connection_writer, is_sqlite, read_session, row_writer, write_session
from core.storage.models import Bullet, BulletRevision, Delta, DeltaOp, Playbook, PlaybookVersion, utcnow
from core.retrieval.embeddings import embed_after_write, embed_query
from core.playbook.ops import DEFAULT_SECTION, DeltaError, DeltaIn, OpIn, check_content, normalize_section
from core.retrieval.search import (RankWeights, Retrieved, bullets_where, detached_copy, index_committed,
                            lexical_candidates, search, semantic_near_duplicate)
from core.tokens import estimate_tokens

BEGIN_MARK = "**PLAYBOOK_BEGIN**"
END_MARK = "**PLAYBOOK_END**"
PLAYBOOK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_PREFIX = {"python": "py", "javascript": "js", "ml": "ml", "data_analysis": "da"}

__all__ = [
    "BEGIN_MARK", "END_MARK", "DeltaError", "ApplyResult", "Retrieved", "RankWeights",
    "validate_playbook_id", "get_or_create_playbook", "get_playbook", "list_playbooks",
    "active_bullets", "get_bullet", "apply_delta", "propose_delta", "decide_ops", "auto_apply",
    "submit_delta", "Decision", "render", "bullet_line", "retrieve", "embed_prompt", "similarity",
]


# --------------------------------------------------------------------- playbooks


def validate_playbook_id(playbook_id: str) -> str:
    if not isinstance(playbook_id, str) or not PLAYBOOK_ID_RE.match(playbook_id):
        raise ValueError(
            f"invalid playbook id {playbook_id!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return playbook_id


def _ensure_playbook(session: Session, playbook_id: str, name: Optional[str] = None,
                     environment: Optional[str] = None, description: str = "") -> Playbook:
    validate_playbook_id(playbook_id)
    pb = session.get(Playbook, playbook_id)
    if pb is None:
        pb = Playbook(id=playbook_id, name=name or playbook_id, environment=environment or "general",
                      description=description)
        session.add(pb)
        session.add(PlaybookVersion(playbook_id=playbook_id, number=0, summary="created"))
        session.flush()
    return pb


def get_or_create_playbook(playbook_id: str, name: Optional[str] = None,
                           environment: Optional[str] = None, description: str = "") -> Playbook:
    """Playbook ids are user strings; the first use creates the playbook."""
    with read_session() as s:
        pb = s.get(Playbook, validate_playbook_id(playbook_id))
        if pb is not None:
            return pb
    with write_session() as s:
        return _ensure_playbook(s, playbook_id, name, environment, description)


def get_playbook(playbook_id: str) -> Optional[Playbook]:
    with read_session() as s:
        return s.get(Playbook, playbook_id)


def list_playbooks() -> list[Playbook]:
    with read_session() as s:
        return list(s.exec(select(Playbook).order_by(Playbook.created_at)))


def active_bullets(playbook_id: str, session: Optional[Session] = None) -> list[Bullet]:
    def q(s: Session) -> list[Bullet]:
        stmt = select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.status == "active")
        return list(s.exec(stmt.order_by(Bullet.pk)))

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


# ------------------------------------------------------------------- similarity

_WORD = re.compile(r"[a-z0-9_]+")


def _words(text_: str) -> set[str]:
    return set(_WORD.findall(text_.lower()))


def similarity(a: str, b: str) -> float:
    """Lexical near-duplicate score in [0, 1]: the larger of word-set Jaccard and
    character-sequence similarity, so both reworded and lightly edited copies score high."""
    return _similarity(a, b, 0.0)


def _similarity(a: str, b: str, need: float) -> float:
    """`similarity`, stopping early once it cannot reach `need`.

    The character score is rapidfuzz's normalised Indel similarity (2 * LCS / total length),
    bit-parallel C++: ~100x faster than difflib on bullet-sized texts."""
    wa, wb = _words(a), _words(b)
    jac = len(wa & wb) / len(wa | wb) if wa and wb else 0.0
    if jac >= need > 0:
        return jac
    return max(jac, fuzz.ratio(a.lower(), b.lower(), score_cutoff=need * 100) / 100)


DEDUP_CANDIDATES = 5  # a near-copy shares nearly all of its words, so BM25 ranks it among the first few


def _near_duplicate(session: Session, pb: Playbook, content: str, threshold: float,
                    local: Sequence[Bullet] = (), changed: AbstractSet[int] = frozenset()
                    ) -> Optional[tuple[Bullet | int, float]]:
    """The bullet an ADD repeats (an object from `local`, else its pk): by meaning when embeddings
    are on, else by wording.

    `local`: bullets as this delta left them so far (compared by their current text); `changed`:
    pks this delta touched, whose committed state the indexes still show and so are skipped there.
    """
    semantic = semantic_near_duplicate(session, pb.id, content, get_settings().semantic_dedup_threshold)
    if semantic is not None and semantic[0].pk not in changed:
        return int(semantic[0].pk), semantic[1]  # type: ignore[arg-type]
    best: Optional[tuple[Bullet | int, float]] = None
    candidates: list[tuple[Bullet | int, str]] = [(b, b.content) for b in local]
    candidates += [(pk, text_) for pk, text_, _ in
                   lexical_candidates(session, pb.id, content, DEDUP_CANDIDATES, synonyms=False, version=pb.current_version)
                   if pk not in changed]
    for ref, text_ in candidates:
        score = _similarity(content, text_, threshold)
        if score >= threshold and (best is None or score > best[1]):
            best = (ref, score)
    return best


# ---------------------------------------------------------------- applying ops


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
_BULLETS = Bullet.__table__  # type: ignore[attr-defined]
_PLAYBOOKS = Playbook.__table__  # type: ignore[attr-defined]
_REVISIONS = BulletRevision.__table__  # type: ignore[attr-defined]
_DELTAS = Delta.__table__  # type: ignore[attr-defined]


class _Applier:
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
        self.cache.update(known if known is not None else _load_bullets(self.s, self.pb.id, _named_ids(ops)))

    def _touch(self, b: Bullet) -> None:
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
        found = bullets_where(self.s.connection(), _BULLETS.c.playbook_id == self.pb.id, *criteria)
        return found[0] if found else None

    def _resolve(self, ref: Bullet | int) -> Optional[Bullet]:
        """A near-duplicate `_near_duplicate` named (an object, or a pk): the object this delta
        already holds for it, else a fresh one."""
        if isinstance(ref, Bullet):
            return ref
        held = next((b for b in self.cache.values() if b.pk == ref), None)
        return held or self._fetch(_BULLETS.c.pk == ref)

    def _live(self, bullet_id: Optional[str], what: str) -> Bullet:
        b = self.cache.get(bullet_id or "") or self._fetch(_BULLETS.c.id == (bullet_id or ""))
        if b is None:
            raise DeltaError(f"{what}: bullet {bullet_id!r} does not exist in playbook {self.pb.id!r}")
        if b.status != "active":
            raise DeltaError(f"{what}: bullet {bullet_id!r} was removed" +
                             (f" (merged into {b.merged_into})" if b.merged_into else ""))
        return b

    def _new_bullet(self, section: Optional[str], content: str, helpful: int = 0, harmful: int = 0,
                    neutral: int = 0, bullet_id: Optional[str] = None, check_id: bool = True) -> Bullet:
        if bullet_id is None:
            prefix = ENV_PREFIX.get(self.pb.environment, "b")
            bullet_id = f"{prefix}-{self.pb.next_seq:05d}"
            self.pb.next_seq += 1
        elif check_id and (bullet_id in self.cache or self._fetch(_BULLETS.c.id == bullet_id) is not None):
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
            dup = _near_duplicate(self.s, self.pb, content, self.threshold, local,
                                  {b.pk for b in touched if b.pk is not None})
            found = self._resolve(dup[0]) if dup is not None else None
            if found is not None:
                b, score = found, dup[1]  # type: ignore[index]
                self._touch(b)
                b.helpful += 1
                b.updated_at = now
                self.mark(b)
                return OpResult("TAG", b.id, f"near-duplicate of {b.id} (similarity {score:.2f}): tagged helpful instead of adding")
            b = self._new_bullet(op.section, content)
            return OpResult("ADD", b.id)
        if op.type == "MERGE":
            sources = [self._live(bid, what) for bid in op.bullet_ids]
            merged = self._new_bullet(op.section or sources[0].section, check_content(op.content),
                                      sum(b.helpful for b in sources), sum(b.harmful for b in sources),
                                      sum(b.neutral for b in sources))
            for b in sources:
                self._touch(b)
                b.status, b.merged_into, b.updated_at = "removed", merged.id, now
                self.mark(b)
                self.count_change -= 1
            return OpResult("MERGE", merged.id, f"merged {', '.join(op.bullet_ids)}")
        b = self._live(op.bullet_id, what)
        self._touch(b)
        if op.type == "UPDATE":
            if before is not None and b.content != before:
                raise DeltaError(f"{what}: bullet {b.id} changed since this update was proposed; review it again")
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
        prev_count, prev_tokens = w.row("SELECT bullet_count, token_count FROM playbookversion "
                                        "WHERE playbook_id = ? AND number = ?", (pb.id, pb.current_version))
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
                w.update(_BULLETS, {"pk": b.pk}, changed)
            token_delta += _line_tokens(b) - self.tokens_before.get(key, 0)
            revisions.append({"playbook_id": pb.id, "bullet_pk": b.pk, "bullet_id": b.id, "version": number,
                              "section": b.section, "content": b.content, "helpful": b.helpful,
                              "harmful": b.harmful, "neutral": b.neutral, "status": b.status})
        w.insert(_REVISIONS, revisions)  # plain dicts: every column is given, none has a default
        w.add([PlaybookVersion(
            playbook_id=pb.id, number=number, parent=pb.current_version, delta_id=self.delta_id,
            summary=summary[:500], bullet_count=prev_count + self.count_change,
            token_count=max(0, prev_tokens + token_delta))])
        now = utcnow()
        w.update(_PLAYBOOKS, {"id": pb.id}, {"current_version": number, "next_seq": pb.next_seq, "modified_at": now})
        for attr, value in (("current_version", number), ("next_seq", pb.next_seq), ("modified_at", now)):
            set_committed_value(pb, attr, value)  # as stored: nothing left for the unit of work to flush
        _embed_after_commit(self.s, [b.pk for b in self.touched.values() if b.pk is not None])
        _index_after_commit(self.s, pb.id, number - 1, number, list(self.touched.values()))
        return number


def _embed_after_commit(session: Session, pks: list[int]) -> None:
    """Embed the touched bullets once (and only if) this transaction commits; never on the query path."""
    if not pks or get_settings().embedder == "none":
        return
    event.listen(session, "after_commit", lambda _s: embed_after_write(pks), once=True)


def _index_after_commit(session: Session, playbook_id: str, old: int, new: int, bullets: list[Bullet]) -> None:
    """Once this transaction commits, move the in-memory retrieval index to the new version with the
    bullets it wrote (copied now, as stored)."""
    copies = [detached_copy(b) for b in bullets if b.pk is not None]
    url = str(session.get_bind().url)  # type: ignore[union-attr]
    event.listen(session, "after_commit", lambda _s: index_committed(url, playbook_id, old, new, copies), once=True)


def _summary(results: Sequence[OpResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.type] = counts.get(r.type, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in counts.items()) or "no change"


def _as_ops(ops: DeltaIn | Iterable[OpIn | dict]) -> tuple[str, list[OpIn]]:
    if isinstance(ops, DeltaIn):
        return ops.reasoning, list(ops.operations)
    out: list[OpIn] = []
    for i, op in enumerate(ops):
        try:
            out.append(op if isinstance(op, OpIn) else OpIn.model_validate(op))
        except Exception as exc:  # pydantic ValidationError, TypeError
            raise DeltaError(f"operation {i + 1}: {exc}") from exc
    return "", out


def _named_ids(ops: Sequence[OpIn]) -> set[str]:
    return {i for op in ops for i in ([op.bullet_id] if op.bullet_id else []) + list(op.bullet_ids)}


def _load_bullets(s: Session, playbook_id: str, ids: set[str]) -> dict[str, Bullet]:
    """The named bullets, detached: the applier writes them itself."""
    if not ids:
        return {}
    return {b.id: b for b in bullets_where(s.connection(), _BULLETS.c.playbook_id == playbook_id,
                                           _BULLETS.c.id.in_(ids))}


def _op_rows(delta: Delta, ops: Sequence[OpIn], known: dict[str, Bullet]) -> list[DeltaOp]:
    """The ops as pending rows, each remembering the text of the bullet it names as it is now."""
    rows = []
    for i, op in enumerate(ops):
        b = known.get(op.bullet_id) if op.bullet_id else None
        rows.append(DeltaOp(delta_id=delta.id, seq=i, type=op.type, section=op.section, content=op.content,
                            bullet_id=op.bullet_id, bullet_ids=list(op.bullet_ids), tag=op.tag,
                            justification=op.justification, evidence=op.evidence,
                            before=b.content if b is not None else None))
    return rows


def _store_ops(s: Session, delta: Delta, ops: Sequence[OpIn],
               known: Optional[dict[str, Bullet]] = None) -> list[DeltaOp]:
    """The ops as pending rows; `known`: the bullets they name, loaded here when not given."""
    rows = _op_rows(delta, ops, known if known is not None else _load_bullets(s, delta.playbook_id, _named_ids(ops)))
    s.add_all(rows)
    s.flush()
    return rows


def _row_to_op(row: DeltaOp) -> OpIn:
    return OpIn(type=row.type, section=row.section, content=row.content, bullet_id=row.bullet_id,  # type: ignore[arg-type]
                bullet_ids=list(row.bullet_ids or []), tag=row.tag, justification=row.justification,  # type: ignore[arg-type]
                evidence=row.evidence)


def _prewarm_dedup(ops: Sequence[OpIn]) -> None:
    """Embed ADD texts before taking the write lock, so semantic dedup inside it is a cache hit."""
    if get_settings().embedder != "none":
        for op in ops:
            if op.type == "ADD" and op.content and op.content.strip():
                embed_query(op.content.strip())


def apply_delta(playbook_id: str, ops: DeltaIn | Iterable[OpIn | dict], reasoning: str = "",
                episode_id: Optional[str] = None, source: str = "human", actor: str = "user") -> ApplyResult:
    """Apply every op or none, as one new version."""
    r, op_list = _as_ops(ops)
    reasoning = reasoning or r
    if not op_list:
        raise DeltaError("the delta has no operations")
    _prewarm_dedup(op_list)
    with write_session() as s:
        pb = _ensure_playbook(s, playbook_id)
        delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning, source=source,
                      status="applied", base_version=pb.current_version, decided_at=utcnow())
        w = connection_writer(s.connection())
        w.add([delta])  # a plain row, first: the version refers to it
        known = _load_bullets(s, pb.id, _named_ids(op_list))
        rows = _op_rows(delta, op_list, known)
        ap = _Applier(s, pb, episode_id, delta.id)
        ap.preload(op_list, known)
        results = []
        for i, (op, row) in enumerate(zip(op_list, rows)):
            res = ap.apply(i, op)
            row.decision, row.decided_by, row.decided_at, row.result_bullet_id = "approved", actor, utcnow(), res.bullet_id
            row.note = res.note or None
            results.append(res)
        delta.version = ap.finish(_summary(results))
        w.add(rows)  # once, already decided; any failure above rolls all of it back
        w.update(_DELTAS, {"id": delta.id}, {"version": delta.version})
        return ApplyResult(delta.id, delta.version, results)


def propose_delta(playbook_id: str, ops: DeltaIn | Iterable[OpIn | dict], reasoning: str = "",
                  episode_id: Optional[str] = None, source: str = "curator") -> str:
    """Store a delta for review; nothing changes in the playbook yet."""
    return submit_delta(playbook_id, ops, reasoning, episode_id, source, auto=False)[0]


def _store_delta(s: Session, playbook_id: str, op_list: list[OpIn], reasoning: str, episode_id: Optional[str],
                 source: str, known: Optional[dict[str, Bullet]] = None) -> tuple[Delta, list[DeltaOp]]:
    pb = _ensure_playbook(s, playbook_id)
    delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning, source=source,
                  base_version=pb.current_version)
    s.add(delta)
    s.flush()
    rows = _store_ops(s, delta, op_list, known)
    if not op_list:
        delta.status, delta.decided_at = "rejected", utcnow()
    return delta, rows


def _settle(s: Session, delta: Delta, rows: Sequence[DeltaOp]) -> None:
    """The delta's status from the decisions on all of its ops (`rows`)."""
    decisions = {r.decision for r in rows}
    if "pending" in decisions and rows:
        delta.status = "pending"
        return
    approved = sum(r.decision == "approved" for r in rows)
    delta.status = "applied" if approved == len(rows) and rows else ("rejected" if approved == 0 else "partially_applied")
    delta.decided_at = utcnow()


@dataclass
class Decision:
    op_id: int
    approve: bool
    note: Optional[str] = None
    content: Optional[str] = None  # an edited text for ADD / UPDATE / MERGE


def decide_ops(delta_id: str, decisions: Sequence[Decision], actor: str = "user") -> ApplyResult:
    """Record decisions on pending ops; the approved ones land together as one version.

    All or nothing: if an approved op cannot apply, nothing is recorded.
    """
    with write_session() as s:
        delta = s.get(Delta, delta_id)
        if delta is None:
            raise DeltaError(f"delta {delta_id!r} does not exist")
        return _decide(s, delta, decisions, actor, lenient=False)


def auto_apply(delta_id: str, actor: str = "auto") -> ApplyResult:
    """Approve every pending op that can be applied; reject the others, saying why."""
    with write_session() as s:
        delta = s.get(Delta, delta_id)
        if delta is None:
            raise DeltaError(f"delta {delta_id!r} does not exist")
        return _decide(s, delta, _all_pending(s, delta_id), actor, lenient=True)


def submit_delta(playbook_id: str, ops: DeltaIn | Iterable[OpIn | dict], reasoning: str = "",
                 episode_id: Optional[str] = None, source: str = "curator",
                 auto: bool = False) -> tuple[str, Optional[ApplyResult]]:
    """Store a delta and, in auto mode, apply what can be applied: one transaction either way."""
    r, op_list = _as_ops(ops)
    if not op_list:
        return _record_empty(playbook_id, reasoning or r, episode_id, source), None
    _prewarm_dedup(op_list)
    with write_session() as s:
        pb = _ensure_playbook(s, playbook_id)  # held: the session's identity map only keeps it while referenced
        known = _load_bullets(s, pb.id, _named_ids(op_list))
        if not auto:
            return _store_delta(s, playbook_id, op_list, reasoning or r, episode_id, source, known)[0].id, None
        if not is_sqlite(s.get_bind()):  # type: ignore[arg-type]
            # ids below come from max(oid) under SQLite's write lock; elsewhere let the database assign them
            delta, rows = _store_delta(s, playbook_id, op_list, reasoning or r, episode_id, source, known)
            return delta.id, _decide(s, delta, [Decision(row.oid, True) for row in rows], "auto",  # type: ignore[arg-type]
                                     lenient=True, rows=rows, known=known)
        # The delta and its ops are plain rows here, not objects for the unit of work: the delta goes in
        # first (bullets refer to it), the ops are decided before they are stored and then inserted once
        # with their decisions, and the delta gets its outcome. Op ids are assigned here, under the write lock.
        w = connection_writer(s.connection())
        delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning or r, source=source,
                      base_version=pb.current_version)
        w.add([delta])
        rows = _op_rows(delta, op_list, known)
        first = int(w.scalar("SELECT coalesce(max(oid), 0) + 1 FROM deltaop"))
        for i, row in enumerate(rows):
            row.oid = first + i
        res = _decide(s, delta, [Decision(first + i, True) for i in range(len(rows))], "auto", lenient=True,
                      rows=rows, known=known)
        w.add(rows)
        w.update(_DELTAS, {"id": delta.id},
                 {"status": delta.status, "version": delta.version, "decided_at": delta.decided_at})
        return delta.id, res


def _record_empty(playbook_id: str, reasoning: str, episode_id: Optional[str], source: str) -> str:
    """A delta with no operations, kept (as rejected: nothing to decide) so the trace shows what the
    Curator answered: one plain transaction, as most episodes that learn nothing end this way."""
    with row_writer() as w:
        found = w.row("SELECT current_version FROM playbook WHERE id = ?", (validate_playbook_id(playbook_id),))
        if found is not None:
            delta = Delta(playbook_id=playbook_id, episode_id=episode_id, reasoning=reasoning, source=source,
                          status="rejected", base_version=found[0], decided_at=utcnow())
            w.add([delta])
            return delta.id
    with write_session() as s:  # a new playbook: created as everywhere else
        return _store_delta(s, playbook_id, [], reasoning, episode_id, source)[0].id


def _all_pending(s: Session, delta_id: str) -> list[Decision]:
    stmt = select(DeltaOp.oid).where(DeltaOp.delta_id == delta_id, DeltaOp.decision == "pending")
    return [Decision(oid, True) for oid in s.exec(stmt.order_by(DeltaOp.seq))]  # type: ignore[arg-type]


def _decide(s: Session, delta: Delta, decisions: Sequence[Decision], actor: str, lenient: bool,
            rows: Optional[Sequence[DeltaOp]] = None, known: Optional[dict[str, Bullet]] = None) -> ApplyResult:
    """Apply the approved ops as one version. Lenient: an op that cannot apply is rejected
    with the reason (it changed nothing) and the rest apply; strict: it raises.
    `rows`: all of the delta's ops, when the caller already holds them."""
    pb = _ensure_playbook(s, delta.playbook_id)
    if rows is None:
        rows = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta.id)))
    by_oid = {r.oid: r for r in rows}
    ap = _Applier(s, pb, delta.episode_id, delta.id, dedup_within=lenient)
    ap.preload([_row_to_op(by_oid[d.op_id]) for d in decisions if d.approve and d.op_id in by_oid], known)
    results: list[OpResult] = []
    rejected: list[tuple[int, str]] = []
    now = utcnow()
    for d in decisions:
        row = by_oid.get(d.op_id)
        if row is None:
            raise DeltaError(f"op id {d.op_id} is not part of delta {delta.id}")
        if row.decision != "pending":
            raise DeltaError(f"op id {d.op_id} was already {row.decision}")
        if not d.approve:
            row.decision, row.decided_by, row.decided_at, row.note = "rejected", actor, now, d.note
            continue
        if d.content is not None:
            if row.type not in ("ADD", "UPDATE", "MERGE"):
                raise DeltaError(f"op id {d.op_id} ({row.type}) has no text to edit")
            try:
                row.content = check_content(d.content)
            except ValueError as exc:
                raise DeltaError(f"op id {d.op_id}: {exc}") from exc
        op = _row_to_op(row)
        before = row.before if row.type == "UPDATE" else None
        if lenient:
            # apply() checks an op completely before it changes any row, so a rejected op leaves
            # nothing to roll back (no savepoint: each one would flush the session first)
            state = ap.snapshot()
            try:
                res = ap.apply(row.seq, op, before=before)
            except DeltaError as exc:
                ap.restore(state)
                row.decision, row.decided_by, row.decided_at = "rejected", actor, now
                row.note = f"not applied: {exc}"
                rejected.append((row.oid, str(exc)))  # type: ignore[arg-type]
                continue
        else:
            res = ap.apply(row.seq, op, before=before)
        row.decision, row.decided_by, row.decided_at, row.result_bullet_id = "approved", actor, now, res.bullet_id
        row.note = "; ".join(x for x in (d.note, res.note) if x) or None
        results.append(res)
    version = ap.finish(_summary(results)) if results else None
    if version is not None:
        delta.version = version
    _settle(s, delta, rows)
    return ApplyResult(delta.id, version, results, rejected)


# ----------------------------------------------------------------- rendering


def _line(bullet_id: str, helpful: int, harmful: int, content: str) -> str:
    return f"[{bullet_id}] helpful={helpful} harmful={harmful} :: {content}"


def bullet_line(b: Bullet) -> str:
    return _line(b.id, b.helpful, b.harmful, b.content)


def render(playbook: Optional[Playbook], bullets: Sequence[Bullet], token_budget: Optional[int] = None) -> str:
    """The ACE prompt form, by section, between the markers.

    Bullets come in priority order; with a budget, the ones that do not fit are
    left out rather than truncated mid-strategy.
    """
    used = estimate_tokens(f"{BEGIN_MARK}\n{END_MARK}")
    sections: dict[str, list[str]] = {}
    for b in bullets:
        d = getattr(b, "__dict__", None) or {}
        try:  # loaded values straight from the instance: 4x faster than the ORM's descriptors, same values
            status, section = d["status"], d["section"]
            line = _line(d["id"], d["helpful"], d["harmful"], d["content"])  # bullet_line(b), from loaded values
        except KeyError:  # an expired or unloaded attribute: let the ORM load it
            status = b.status
            section, line = (b.section, bullet_line(b)) if status == "active" else ("", "")
        if status != "active":
            continue
        cost = estimate_tokens(line) + 1
        if token_budget is not None and used + cost > token_budget:
            continue
        sections.setdefault(section, []).append(line)
        used += cost
    lines = [BEGIN_MARK]
    for section, items in sections.items():
        lines.append(f"## {section}")
        lines.extend(items)
    lines.append(END_MARK)
    return "\n".join(lines)


# ----------------------------------------------------------------- retrieval

def retrieve(playbook_id: str, query: str, k: Optional[int] = None,
             weights: Optional[RankWeights] = None, expand: Optional[bool] = None) -> list[Retrieved]:
    """Top-k active bullets for a query: semantic, BM25, counters and provenance fused.

    Weights default to the ACE_RANK_WEIGHTS setting; query expansion (an LLM's
    likely pitfalls added to the task) to ACE_QUERY_EXPANSION. Without an
    embedder this is BM25 with the counters. When fewer than k bullets match,
    the best-rated others fill the list, so a new task still sees the
    playbook's proven strategies. Each result carries its per-signal scores.
    """
    settings = get_settings()
    k = settings.default_k if k is None else k
    w = weights if weights is not None else RankWeights.from_settings(settings)
    do_expand = (settings.query_expansion and settings.llm_configured) if expand is None else expand
    return search(playbook_id, query, k, w, expand=do_expand)


def embed_prompt(playbook_id: str, prompt: str, k: Optional[int] = None,
                 token_budget: Optional[int] = None) -> str:
    """The prompt followed by the top-k bullets between the markers."""
    hits = retrieve(playbook_id, prompt, k)
    pb = None
    if not hits:  # an empty or unknown playbook: the first use creates it (and validates the id)
        pb = get_or_create_playbook(playbook_id)
    budget = get_settings().prompt_token_budget if token_budget is None else token_budget
    return f"{prompt}\n\n{render(pb, [h.bullet for h in hits], budget)}"


def count_bullets(playbook_id: str) -> int:
    with read_session() as s:
        return int(s.exec(select(func.count()).select_from(Bullet).where(  # type: ignore[arg-type]
            Bullet.playbook_id == playbook_id, Bullet.status == "active")).one())
