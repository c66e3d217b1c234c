"""Read models for the UI: the queries the pages need, as plain data.

Pages stay thin and never touch SQL; everything here is also usable from a
notebook or another front end.
"""

from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.sql.expression import Select

from core.storage.db import read_session
from core.storage.models import Bullet, Delta, DeltaOp, Episode, Event, Job, Playbook, PlaybookVersion, Reflection


def _columns(*columns: Any) -> Select[*tuple[Any, ...]]:
    """A SELECT of several columns, as sqlmodel's select() builds it: its typing stops at four."""
    return Select(*columns)


def episodes_frame(playbook_id: Optional[str] = None, status: Optional[str] = None, limit: int = 500,
                   search: str = "") -> pd.DataFrame:
    with read_session() as s:
        stmt = _columns(Episode.id, Episode.created_at, Episode.playbook_id, Episode.status, Episode.success,
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


def playbook_ids() -> list[str]:
    with read_session() as s:
        return list(s.exec(select(Playbook.id).order_by(Playbook.id)))


def job_for_episode(episode: Episode) -> Optional[Job]:
    if not episode.job_id:
        return None
    with read_session() as s:
        return s.get(Job, episode.job_id)


# ------------------------------------------------------------- playbook page


def bullets_frame(playbook_id: str, search: str = "", section: str = "", include_removed: bool = False) -> pd.DataFrame:
    with read_session() as s:
        stmt = _columns(Bullet.id, Bullet.section, Bullet.content, Bullet.helpful, Bullet.harmful, Bullet.neutral,
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
            out.append(PendingDelta(d, ops, task))
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
        return PendingDelta(d, ops, ep.task if ep else None)


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


def learning_frame(playbook_id: Optional[str] = None, limit: int = 20_000) -> pd.DataFrame:
    with read_session() as s:
        stmt = _columns(Episode.id, Episode.playbook_id, Episode.created_at, Episode.success, Episode.attempts,
                        Episode.tokens, Episode.llm_ms, Episode.sandbox_ms, Episode.started_at, Episode.finished_at
                        ).where(col(Episode.status).in_(["succeeded", "failed"]), Episode.mode != "learn")
        if playbook_id:
            stmt = stmt.where(Episode.playbook_id == playbook_id)
        rows = s.exec(stmt.order_by(col(Episode.created_at)).limit(limit)).all()
    df = pd.DataFrame(rows, columns=["id", "playbook", "created", "success", "attempts", "tokens", "llm_ms",
                                     "sandbox_ms", "started", "finished"])
    if df.empty:
        return df
    df["success"] = df["success"].fillna(False).astype(int)
    df["latency_s"] = (pd.to_datetime(df["finished"]) - pd.to_datetime(df["started"])).dt.total_seconds()
    df["n"] = df.groupby("playbook").cumcount() + 1
    df["rolling_success"] = df.groupby("playbook")["success"].transform(lambda x: x.rolling(10, min_periods=1).mean())
    return df


def versions_frame(playbook_id: Optional[str] = None) -> pd.DataFrame:
    with read_session() as s:
        stmt = _columns(PlaybookVersion.playbook_id, PlaybookVersion.number, PlaybookVersion.bullet_count,
                        PlaybookVersion.token_count, PlaybookVersion.created_at, PlaybookVersion.summary,
                        PlaybookVersion.delta_id)
        if playbook_id:
            stmt = stmt.where(PlaybookVersion.playbook_id == playbook_id)
        rows = s.exec(stmt.order_by(PlaybookVersion.playbook_id, col(PlaybookVersion.number))).all()
    return pd.DataFrame(rows, columns=["playbook", "version", "bullets", "tokens", "created", "summary", "delta"])
