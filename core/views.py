"""Read models for the UI: the queries the pages need, as plain data.

Pages stay thin and never touch SQL; everything here is also usable from a
notebook or another front end.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import pandas as pd
from sqlalchemy import func, or_, text
from sqlmodel import col, select
from sqlmodel.sql.expression import Select

from core.playbook import active_bullets, bullet_line
from core.storage.db import read_session
from core.storage.models import (
    Bullet,
    Delta,
    DeltaOp,
    Episode,
    Event,
    Job,
    LLMCall,
    Reflection,
)


def select_columns(*columns: Any) -> Select[*tuple[Any, ...]]:
    """A SELECT of several columns, as sqlmodel's select() builds it: its typing stops at four."""
    return Select(*columns)


def episodes_frame(playbook_id: Optional[str] = None, status: Optional[str] = None, limit: int = 500,
                   search: str = "") -> pd.DataFrame:
    with read_session() as s:
        stmt = select_columns(Episode.id, Episode.created_at, Episode.playbook_id, Episode.status, Episode.success,
                        Episode.attempts, Episode.tokens, Episode.mode, Episode.task)
        if playbook_id:
            stmt = stmt.where(Episode.playbook_id == playbook_id)
        if status:
            stmt = stmt.where(Episode.status == status)
        if search:
            stmt = stmt.where(col(Episode.task).contains(search))
        rows = s.exec(stmt.order_by(col(Episode.created_at).desc()).limit(limit)).all()
    df = pd.DataFrame(rows, columns=["id", "created", "playbook", "status", "success", "attempts", "tokens", "mode",
                                     "task"])
    df["task"] = df["task"].str.slice(0, 120)
    return df


def playbook_bullets(playbook_id: str) -> list[str]:
    """The playbook's active bullets as a prompt shows them ([id] helpful=... :: content)."""
    return [bullet_line(b) for b in active_bullets(playbook_id)]


def comparable_episodes(ep: Episode, limit: int = 50) -> dict[str, str]:
    """Other finished episodes to put beside `ep` (id -> label): its re-runs and the same task first."""
    with read_session() as s:
        same = s.exec(select(Episode).where(Episode.id != ep.id, Episode.task == ep.task,
                                            col(Episode.status).not_in(["queued", "running"]))
                      .order_by(col(Episode.created_at).desc()).limit(limit)).all()
        latest = s.exec(select(Episode).where(Episode.id != ep.id, col(Episode.status).not_in(["queued", "running"]))
                        .order_by(col(Episode.created_at).desc()).limit(limit)).all()
    out: dict[str, str] = {}
    for e in [*same, *latest]:
        if e.id not in out and len(out) < limit:
            verdict = "passed" if e.success else e.status
            out[e.id] = f"{'same task · ' if e.task == ep.task else ''}{e.id} · {verdict} · {e.task[:60]}"
    return out


def get_episode(episode_id: str) -> Optional[Episode]:
    with read_session() as s:
        return s.get(Episode, episode_id)


def events(episode_id: str) -> list[Event]:
    with read_session() as s:
        return list(s.exec(select(Event).where(Event.episode_id == episode_id).order_by(col(Event.seq))))


def reflection_for(episode_id: str) -> Optional[Reflection]:
    with read_session() as s:
        return s.exec(select(Reflection).where(Reflection.episode_id == episode_id)
                      .order_by(col(Reflection.id).desc())).first()


def recent_reflections(limit: int = 200) -> list[tuple[Reflection, str]]:
    with read_session() as s:
        rows = s.exec(select(Reflection, Episode.task).join(Episode, col(Episode.id) == Reflection.episode_id)
                      .order_by(col(Reflection.id).desc()).limit(limit)).all()
    return [(r, t) for r, t in rows]


_RECENT_FIRST = text(
    "SELECT p.id FROM playbook p "
    "LEFT JOIN (SELECT playbook_id, max(created_at) AS last FROM episode GROUP BY playbook_id) e "
    "ON e.playbook_id = p.id "
    "WHERE :bench OR p.id NOT IN (SELECT id FROM benchrun) "
    "ORDER BY CASE WHEN e.last IS NULL OR p.modified_at > e.last THEN p.modified_at ELSE e.last END DESC, p.id")


def playbook_ids(include_bench: bool = False) -> list[str]:
    """Playbook ids, the one used last first (changed or run with): the default a page opens on. The
    playbooks benchmark runs make for themselves are left out unless asked for."""
    with read_session() as s:
        return list(s.connection().execute(_RECENT_FIRST, {"bench": include_bench}).scalars())


def job_for_episode(episode: Episode) -> Optional[Job]:
    if not episode.job_id:
        return None
    with read_session() as s:
        return s.get(Job, episode.job_id)


# ------------------------------------------------------------- the model calls of an episode


@dataclass(frozen=True)
class LLMCallView:
    """One request to the model, as the `llmcall` table logged it. Every string here came from or went to a
    model: show it as text, never as markdown or HTML."""

    id: int
    n: int  # 1, 2, ... in the order the episode made its calls
    role: str
    model: str
    mode: str  # json_schema | json_object | plain
    messages: list[dict[str, Any]]
    response: Optional[str]
    finish_reason: Optional[str]  # None: no reply (the request failed)
    max_tokens: Optional[int]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    retry: int  # 0: the round's first request, n: its n-th retry
    round: int  # 1: the first request, 2: the repair request
    cost: float
    error: Optional[str]
    created_at: Optional[datetime]

    @property
    def truncated(self) -> bool:
        """The reply was cut at the token cap (or the server's own limit)."""
        return self.finish_reason == "length"

    @property
    def cut_at(self) -> int:
        """Where a truncated reply was cut: the request's cap, else the tokens it got."""
        return self.max_tokens if self.max_tokens is not None else self.completion_tokens

    @property
    def round_label(self) -> str:
        """1, or "2 (repair)" for the repair request."""
        return f"{self.round} (repair)" if self.round >= 2 else str(self.round)

    @property
    def error_first_line(self) -> str:
        return (self.error or "").strip().splitlines()[0] if (self.error or "").strip() else ""

    @property
    def finish_label(self) -> str:
        if self.finish_reason:
            return self.finish_reason
        return "error" if self.error else "-"

    def message_texts(self) -> list[tuple[str, str]]:
        """(role, content) of each message sent; content that is not a string (parts) as JSON."""
        out = []
        for m in self.messages:
            if not isinstance(m, dict):
                out.append(("?", json.dumps(m, ensure_ascii=False, default=str)))
                continue
            content = m.get("content", "")
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str,
                                                                       indent=2)
            out.append((str(m.get("role") or "?"), text))
        return out


def llm_calls(episode_id: str, also: Iterable[int] = ()) -> list[LLMCallView]:
    """Every model call an episode made, failed ones and retries included, in the order they were made; `also`:
    ids its trace names (`call_ids`) that were logged without the episode."""
    also = sorted(set(also))
    with read_session() as s:
        where = col(LLMCall.episode_id) == episode_id
        if also:
            where = or_(where, col(LLMCall.id).in_(also))
        rows = list(s.exec(select(LLMCall).where(where).order_by(col(LLMCall.id))))
    return [LLMCallView(id=r.id or 0, n=i, role=r.role or "", model=r.model or "", mode=r.mode or "",
                        messages=list(r.messages or []) if isinstance(r.messages, list) else [],
                        response=r.response, finish_reason=r.finish_reason, max_tokens=r.max_tokens,
                        prompt_tokens=r.prompt_tokens or 0, completion_tokens=r.completion_tokens or 0,
                        latency_ms=r.latency_ms or 0.0, retry=r.retry or 0, round=r.round or 1,
                        cost=r.cost or 0.0, error=r.error, created_at=r.created_at)
            for i, r in enumerate(rows, start=1)]


def llm_calls_frame(calls: list[LLMCallView]) -> pd.DataFrame:
    """The compact table of an episode's calls (every cell plain text or a number)."""
    return pd.DataFrame(
        [{"#": c.n, "role": c.role, "mode": c.mode, "round": c.round_label, "retry": c.retry,
          "finish": c.finish_label + (f" (cut at {c.cut_at} tokens)" if c.truncated else ""),
          "tokens in": c.prompt_tokens, "tokens out": c.completion_tokens, "cap": c.max_tokens,
          "ms": round(c.latency_ms), "cost": c.cost, "error": c.error_first_line, "call id": c.id} for c in calls],
        columns=["#", "role", "mode", "round", "retry", "finish", "tokens in", "tokens out", "cap", "ms", "cost",
                 "error", "call id"])


def call_ids_of(payload: Any) -> list[int]:
    """The `llmcall` ids an event's payload names (`call_ids`), read defensively."""
    raw = payload.get("call_ids") if isinstance(payload, dict) else None
    if not isinstance(raw, list):
        return []
    return [int(i) for i in raw if (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str)
                                                                                       and i.isdigit())]


# ------------------------------------------------------------- what an episode learned, or why not


@dataclass(frozen=True)
class DroppedOp:
    """An op a model proposed that was dropped before it reached a delta, and why (all of it model text)."""

    op: dict[str, Any]
    reason: str

    @property
    def text(self) -> str:
        """The op exactly as proposed, as one line of JSON (nulls and odd shapes are what matters here)."""
        raw = json.dumps(self.op, ensure_ascii=False, default=str)
        return raw if len(raw) <= 600 else raw[:599] + "…"


def dropped_ops(raw: Any) -> list[DroppedOp]:
    """`[{"op": {...}, "reason": "..."}]` as stored (a delta's `dropped`, a curate payload's), read defensively:
    anything else in the list becomes an op of its own with no reason."""
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        if isinstance(item, dict) and ("op" in item or "reason" in item):
            op = item.get("op")
            out.append(DroppedOp(op if isinstance(op, dict) else {"value": op}, str(item.get("reason") or "")))
        else:
            out.append(DroppedOp(item if isinstance(item, dict) else {"value": item}, ""))
    return out


def op_summary(op: dict[str, Any]) -> str:
    """One line of plain text for a proposed op (for st.text, never markdown)."""
    t = str(op.get("type") or "?")
    if t == "TAG":
        return f"TAG [{op.get('bullet_id')}] -> {op.get('tag')}"
    if t == "REMOVE":
        return f"REMOVE [{op.get('bullet_id')}]"
    if t == "MERGE":
        raw_ids = op.get("bullet_ids")
        ids = " + ".join(f"[{i}]" for i in raw_ids) if isinstance(raw_ids, list) else str(raw_ids)
        return f"MERGE {ids} -> {op.get('content') or ''}"
    if t == "UPDATE":
        return f"UPDATE [{op.get('bullet_id')}] -> {op.get('content') or ''}"
    if t == "ADD":
        sec = f" ({op['section']})" if op.get("section") else ""
        return f"ADD{sec} {op.get('content') or ''}"
    return json.dumps(op, ensure_ascii=False, default=str)


def invented_count(payload: Any) -> int:
    """How many bullet ids the model claimed that were not in its prompt (`invented_ids`: a count, or a list)."""
    raw = payload.get("invented_ids") if isinstance(payload, dict) else None
    if isinstance(raw, bool):
        return 0
    if isinstance(raw, int):
        return max(raw, 0)
    if isinstance(raw, list):
        return len(raw)
    return 0


def skipped_reason(payload: Any) -> Optional[str]:
    """The reason of an `apply` payload with `status: "skipped"`, else None."""
    if not isinstance(payload, dict) or payload.get("status") != "skipped":
        return None
    return str(payload.get("reason") or "no reason given")


def invented_listed(payload: Any) -> list[str]:
    """The first few invented ids, as the payload lists them (`invented`), clipped."""
    raw = payload.get("invented") if isinstance(payload, dict) else None
    return [str(i) for i in raw] if isinstance(raw, list) else []


LLM_STEPS = ("generate", "review", "optimize", "reflect", "curate")


@dataclass(frozen=True)
class UnusableReply:
    """A model step whose reply could not be used (a Generator's is a failed attempt): why, and the raw reply."""

    kind: str
    attempt: Optional[int]
    error: str
    response: Optional[str]  # None: no reply at all (the call itself failed)


def unusable_reply(event: Event) -> Optional[UnusableReply]:
    """The step's unusable reply when its payload has `error`, else None."""
    p = event.payload if isinstance(event.payload, dict) else {}
    if event.kind not in LLM_STEPS or not p.get("error"):
        return None
    response = p.get("response")
    return UnusableReply(event.kind, event.attempt, str(p.get("error")),
                         None if response is None else str(response))


@dataclass
class LearningOutcome:
    """What an episode's learning steps did, from its trace: fields are absent in older episodes."""

    skipped: Optional[str] = None  # "Learning skipped: <reason>"
    dropped: list[DroppedOp] = field(default_factory=list)  # the Curator's ops that were dropped, with reasons
    invented: dict[str, int] = field(default_factory=dict)  # event kind -> bullet ids invented and ignored
    unusable: list[UnusableReply] = field(default_factory=list)
    delta_id: Optional[str] = None
    status: Optional[str] = None  # the apply event's: empty | applied | pending | skipped

    @property
    def invented_total(self) -> int:
        return sum(self.invented.values())

    @property
    def empty(self) -> bool:
        return not (self.skipped or self.dropped or self.invented_total or self.unusable or self.status)


def learning_outcome(episode_id: str, evs: Optional[list[Event]] = None) -> LearningOutcome:
    """The learning outcome of an episode, read from its events (pass them if they are already loaded)."""
    out = LearningOutcome()
    for e in evs if evs is not None else events(episode_id):
        p = e.payload if isinstance(e.payload, dict) else {}
        if e.kind in LLM_STEPS and invented_count(p):
            out.invented[e.kind] = out.invented.get(e.kind, 0) + invented_count(p)
        if e.kind == "curate":
            out.dropped.extend(dropped_ops(p.get("dropped")))
        if e.kind == "apply":
            out.status = str(p.get("status")) if p.get("status") else out.status
            out.delta_id = p.get("delta_id") or out.delta_id
            out.skipped = skipped_reason(p) or out.skipped
        if (u := unusable_reply(e)) is not None:
            out.unusable.append(u)
    return out


# ------------------------------------------------------------- playbook page


def bullets_frame(playbook_id: str, search: str = "", section: str = "", include_removed: bool = False) -> pd.DataFrame:
    with read_session() as s:
        stmt = select_columns(Bullet.id, Bullet.section, Bullet.content, Bullet.helpful, Bullet.harmful, Bullet.neutral,
                        Bullet.status, Bullet.source_episode_id, Bullet.updated_at)
        stmt = stmt.where(Bullet.playbook_id == playbook_id)
        if not include_removed:
            stmt = stmt.where(Bullet.status == "active")
        if section:
            stmt = stmt.where(Bullet.section == section)
        if search:
            stmt = stmt.where(col(Bullet.content).contains(search) | col(Bullet.id).contains(search))
        rows = s.exec(stmt.order_by(col(Bullet.pk))).all()
    return pd.DataFrame(rows, columns=["id", "section", "content", "helpful", "harmful", "neutral", "status",
                                       "source_episode", "updated"])


def sections(playbook_id: str) -> list[str]:
    with read_session() as s:
        return list(s.exec(select(Bullet.section).where(Bullet.playbook_id == playbook_id).distinct()
                           .order_by(Bullet.section)))


@dataclass
class PendingDelta:
    delta: Delta
    ops: list[DeltaOp]
    task: Optional[str]
    dropped: list[DroppedOp] = field(default_factory=list)  # ops the model proposed that never reached the delta


def pending_deltas(playbook_id: Optional[str] = None, limit: int = 50) -> list[PendingDelta]:
    with read_session() as s:
        stmt = select(Delta).where(Delta.status == "pending")
        if playbook_id:
            stmt = stmt.where(Delta.playbook_id == playbook_id)
        deltas = list(s.exec(stmt.order_by(col(Delta.created_at).desc()).limit(limit)))
        out = []
        for d in deltas:
            ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == d.id).order_by(col(DeltaOp.seq))))
            ep = s.get(Episode, d.episode_id) if d.episode_id else None
            task = ep.task if ep else None
            out.append(PendingDelta(d, ops, task, dropped_ops(d.dropped)))
    return out


def count_pending(playbook_id: Optional[str] = None) -> int:
    with read_session() as s:
        stmt = select(func.count()).select_from(Delta).where(Delta.status == "pending")
        if playbook_id:
            stmt = stmt.where(Delta.playbook_id == playbook_id)
        return int(s.exec(stmt).one())


def delta_with_ops(delta_id: str) -> Optional[PendingDelta]:
    with read_session() as s:
        d = s.get(Delta, delta_id)
        if d is None:
            return None
        ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == d.id).order_by(col(DeltaOp.seq))))
        ep = s.get(Episode, d.episode_id) if d.episode_id else None
        return PendingDelta(d, ops, ep.task if ep else None, dropped_ops(d.dropped))


def current_texts(playbook_id: str, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    with read_session() as s:
        rows = s.exec(select(Bullet.id, Bullet.content).where(Bullet.playbook_id == playbook_id,
                                                               col(Bullet.id).in_(ids))).all()
    return dict(rows)


def provenance(playbook_id: str, bullet_id: str) -> dict[str, Any]:
    """Where a bullet came from and every delta that touched it."""
    with read_session() as s:
        b = s.exec(select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.id == bullet_id)).first()
        if b is None:
            return {}
        ops = s.exec(select(DeltaOp, Delta).join(Delta, col(Delta.id) == DeltaOp.delta_id)
                     .where(Delta.playbook_id == playbook_id, DeltaOp.decision == "approved",
                            (DeltaOp.bullet_id == bullet_id) | (DeltaOp.result_bullet_id == bullet_id))
                     .order_by(col(DeltaOp.oid))).all()
    return {"bullet": b, "history": [{"type": o.type, "delta": d.id, "episode": d.episode_id, "version": d.version,
                                      "source": d.source, "justification": o.justification, "at": o.decided_at}
                                     for o, d in ops]}


# ------------------------------------------------------------- learning page


def clip_output(text: str, keep: int = 20_000) -> str:
    """Long program output as its head and its tail with a marker saying how much was cut between them: the
    start (what the program set out to do) and the end (how it stopped) both matter, the middle seldom."""
    if len(text) <= keep:
        return text
    head, tail = text[:keep // 2], text[-(keep // 2):]
    cut = len(text) - len(head) - len(tail)
    size = f"{cut / 1024:,.0f} KB" if cut >= 1024 else f"{cut:,} characters"
    return f"{head}\n\n[… {size} cut here: the head and the tail are shown …]\n\n{tail}"
