"""Deltas: storing, deciding and applying them.

Every change goes through a delta and makes a new immutable version. A delta
applied with `apply_delta` is all-or-nothing: one bad operation (an unknown or
removed bullet, empty content) raises `DeltaError` and nothing is written.
Deltas that wait for review are decided op by op (`decide_ops`); the approved
ops of one decision are applied together as one version. `auto_apply` (the
loop's auto mode) rejects the individually invalid ops with their error noted
and applies the rest, so one hallucinated bullet id does not discard a whole
reflection's worth of learning.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from sqlmodel import Session, select

from core.config import get_settings
from core.errors import plain_message
from core.playbook.applier import DELTAS, Applier, ApplyResult, OpResult, load_bullets, named_ids, summary_of
from core.playbook.ops import BulletMissing, DeltaConflict, DeltaError, DeltaIn, OpIn, check_content
from core.playbook.store import ensure_playbook, validate_playbook_id
from core.retrieval.embeddings import embed_query
from core.storage.db import connection_writer, is_sqlite, row_writer, write_session
from core.storage.models import Bullet, Delta, DeltaOp, utcnow


def _as_ops(ops: DeltaIn | Iterable[OpIn | dict]) -> tuple[str, list[OpIn]]:
    if isinstance(ops, DeltaIn):
        return ops.reasoning, list(ops.operations)
    out: list[OpIn] = []
    for i, op in enumerate(ops):
        try:
            out.append(op if isinstance(op, OpIn) else OpIn.model_validate(op))
        except Exception as exc:  # pydantic ValidationError, TypeError
            raise DeltaError(f"operation {i + 1}: {plain_message(exc)}", loc=("operations", i)) from exc
    return "", out


def check_named(playbook_id: str, ops: Sequence[OpIn], known: Mapping[str, Bullet]) -> None:
    """Every bullet an op names exists in the playbook and is active, else BulletMissing (422) naming the
    first op that does not hold and the id. Explicit deltas are checked this way when they arrive, so a
    proposal that waits for review never names a bullet that is not there."""
    for i, op in enumerate(ops):
        named = [("bullet_id", op.bullet_id)] if op.type in ("UPDATE", "TAG", "REMOVE") else \
            [(j, bid) for j, bid in enumerate(op.bullet_ids)] if op.type == "MERGE" else []
        for where, bid in named:
            b = known.get(bid or "")
            what = f"operation {i + 1} ({op.type})"
            loc = ("operations", i, "bullet_id") if where == "bullet_id" else ("operations", i, "bullet_ids", where)
            if b is None:
                raise BulletMissing(f"{what}: bullet {bid!r} does not exist in playbook {playbook_id!r}", loc=loc)
            if b.status != "active":
                raise BulletMissing(f"{what}: bullet {bid!r} was removed" +
                                    (f" (merged into {b.merged_into})" if b.merged_into else ""), loc=loc)


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
    rows = _op_rows(delta, ops, known if known is not None else load_bullets(s, delta.playbook_id, named_ids(ops)))
    s.add_all(rows)
    s.flush()
    return rows


def _row_to_op(row: DeltaOp) -> OpIn:
    return OpIn(type=row.type, section=row.section, content=row.content, bullet_id=row.bullet_id,
                bullet_ids=list(row.bullet_ids or []), tag=row.tag, justification=row.justification,
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
        pb = ensure_playbook(s, playbook_id)
        delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning, source=source,
                      status="applied", base_version=pb.current_version, decided_at=utcnow())
        w = connection_writer(s.connection())
        w.add([delta])  # a plain row, first: the version refers to it
        known = load_bullets(s, pb.id, named_ids(op_list))
        rows = _op_rows(delta, op_list, known)
        ap = Applier(s, pb, episode_id, delta.id)
        ap.preload(op_list, known)
        results = []
        check_named(pb.id, op_list, known)
        for i, (op, row) in enumerate(zip(op_list, rows)):
            try:
                res = ap.apply(i, op)
            except DeltaError as exc:  # all or nothing: the transaction rolls back; say which op failed
                exc.loc = exc.loc or ("operations", i)
                raise
            row.decision, row.decided_by, row.decided_at = "approved", actor, utcnow()
            row.result_bullet_id = res.bullet_id
            row.note = res.note or None
            results.append(res)
        delta.version = ap.finish(summary_of(results))
        w.add(rows)  # once, already decided; any failure above rolls all of it back
        w.update(DELTAS, {"id": delta.id}, {"version": delta.version})
        return ApplyResult(delta.id, delta.version, results)


def propose_delta(playbook_id: str, ops: DeltaIn | Iterable[OpIn | dict], reasoning: str = "",
                  episode_id: Optional[str] = None, source: str = "curator") -> str:
    """Store a delta for review; nothing changes in the playbook yet. Every bullet an op names must exist
    and be active now (BulletMissing otherwise, and nothing is stored)."""
    return submit_delta(playbook_id, ops, reasoning, episode_id, source, auto=False, strict=True)[0]


def _dropped(dropped: Optional[Sequence[Mapping[str, Any]]]) -> Optional[list[dict[str, Any]]]:
    """Dropped ops as the delta row keeps them (None when there are none)."""
    return [dict(d) for d in dropped] if dropped else None


def _store_delta(s: Session, playbook_id: str, op_list: list[OpIn], reasoning: str, episode_id: Optional[str],
                 source: str, known: Optional[dict[str, Bullet]] = None,
                 dropped: Optional[Sequence[Mapping[str, Any]]] = None) -> tuple[Delta, list[DeltaOp]]:
    pb = ensure_playbook(s, playbook_id)
    delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning, source=source,
                  base_version=pb.current_version, dropped=_dropped(dropped))
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
    delta.status = ("applied" if approved == len(rows) and rows
                    else "rejected" if approved == 0 else "partially_applied")
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
                 auto: bool = False,
                 dropped: Optional[Sequence[Mapping[str, Any]]] = None,
                 strict: bool = False) -> tuple[str, Optional[ApplyResult]]:
    """Store a delta and, in auto mode, apply what can be applied: one transaction either way.

    `dropped`: ops a model proposed that were dropped before they got here (`[{"op": ..., "reason": ...}]`),
    kept on the delta so its review shows them. `strict`: every bullet an op names must exist and be
    active (BulletMissing otherwise; nothing is stored), as for a delta a person or an agent sends."""
    r, op_list = _as_ops(ops)
    if not op_list:
        return _record_empty(playbook_id, reasoning or r, episode_id, source, dropped), None
    _prewarm_dedup(op_list)
    with write_session() as s:
        pb = ensure_playbook(s, playbook_id)  # held: the session's identity map only keeps it while referenced
        known = load_bullets(s, pb.id, named_ids(op_list))
        if strict:
            check_named(pb.id, op_list, known)
        if not auto:
            return _store_delta(s, playbook_id, op_list, reasoning or r, episode_id, source, known,
                                dropped)[0].id, None
        if not is_sqlite(s.get_bind()):  # type: ignore[arg-type]
            # ids below come from max(oid) under SQLite's write lock; elsewhere let the database assign them
            delta, rows = _store_delta(s, playbook_id, op_list, reasoning or r, episode_id, source, known, dropped)
            return delta.id, _decide(s, delta, [Decision(row.oid, True) for row in rows], "auto",  # type: ignore[arg-type]
                                     lenient=True, rows=rows, known=known)
        # The delta and its ops are plain rows here, not objects for the unit of work: the delta goes in
        # first (bullets refer to it), the ops are decided before they are stored and then inserted once
        # with their decisions, and the delta gets its outcome. Op ids are assigned here, under the write lock.
        w = connection_writer(s.connection())
        delta = Delta(playbook_id=pb.id, episode_id=episode_id, reasoning=reasoning or r, source=source,
                      base_version=pb.current_version, dropped=_dropped(dropped))
        w.add([delta])
        rows = _op_rows(delta, op_list, known)
        first = int(w.scalar("SELECT coalesce(max(oid), 0) + 1 FROM deltaop"))
        for i, row in enumerate(rows):
            row.oid = first + i
        res = _decide(s, delta, [Decision(first + i, True) for i in range(len(rows))], "auto", lenient=True,
                      rows=rows, known=known)
        w.add(rows)
        w.update(DELTAS, {"id": delta.id},
                 {"status": delta.status, "version": delta.version, "decided_at": delta.decided_at})
        return delta.id, res


def _record_empty(playbook_id: str, reasoning: str, episode_id: Optional[str], source: str,
                  dropped: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """A delta with no operations, kept (as rejected: nothing to decide) so the trace shows what the
    Curator answered: one plain transaction, as most episodes that learn nothing end this way."""
    with row_writer() as w:
        found = w.row("SELECT current_version FROM playbook WHERE id = ?", (validate_playbook_id(playbook_id),))
        if found is not None:
            delta = Delta(playbook_id=playbook_id, episode_id=episode_id, reasoning=reasoning, source=source,
                          status="rejected", base_version=found[0], decided_at=utcnow(), dropped=_dropped(dropped))
            w.add([delta])
            return delta.id
    with write_session() as s:  # a new playbook: created as everywhere else
        return _store_delta(s, playbook_id, [], reasoning, episode_id, source, dropped=dropped)[0].id


def _all_pending(s: Session, delta_id: str) -> list[Decision]:
    stmt = select(DeltaOp.oid).where(DeltaOp.delta_id == delta_id, DeltaOp.decision == "pending")
    return [Decision(oid, True) for oid in s.exec(stmt.order_by(DeltaOp.seq))]  # type: ignore[arg-type]


def _decide(s: Session, delta: Delta, decisions: Sequence[Decision], actor: str, lenient: bool,
            rows: Optional[Sequence[DeltaOp]] = None, known: Optional[dict[str, Bullet]] = None) -> ApplyResult:
    """Apply the approved ops as one version. Lenient: an op that cannot apply is rejected
    with the reason (it changed nothing) and the rest apply; strict: it raises.
    `rows`: all of the delta's ops, when the caller already holds them."""
    pb = ensure_playbook(s, delta.playbook_id)
    if rows is None:
        rows = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta.id)))
    by_oid = {r.oid: r for r in rows}
    ap = Applier(s, pb, delta.episode_id, delta.id, dedup_within=lenient)
    ap.preload([_row_to_op(by_oid[d.op_id]) for d in decisions if d.approve and d.op_id in by_oid], known)
    results: list[OpResult] = []
    rejected: list[tuple[int, str]] = []
    now = utcnow()
    for d in decisions:
        row = by_oid.get(d.op_id)
        if row is None:
            raise DeltaError(f"op id {d.op_id} is not part of delta {delta.id}")
        if row.decision != "pending":
            raise DeltaConflict(f"op id {d.op_id} was already {row.decision}")
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
    version = ap.finish(summary_of(results)) if results else None
    if version is not None:
        delta.version = version
    _settle(s, delta, rows)
    return ApplyResult(delta.id, version, results, rejected)
