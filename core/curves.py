"""The numbers behind the learning curves: finished model episodes in order, what they leave out, a
benchmark run's pass rate by epoch, and the playbook's size across versions."""

from typing import Optional

import pandas as pd
from sqlalchemy import func
from sqlmodel import col, select

from core.bench import bench_progress
from core.storage.db import read_session
from core.storage.models import Episode, PlaybookVersion
from core.views import select_columns


def learning_frame(playbook_id: Optional[str] = None, limit: int = 20_000) -> pd.DataFrame:
    """Finished model episodes, in order: the ones that can learn. Runs of given code (no model), agents'
    learn requests and benchmark episodes are left out: counted in, "72% success" would not be learning."""
    with read_session() as s:
        stmt = select_columns(Episode.id, Episode.playbook_id, Episode.created_at, Episode.success, Episode.attempts,
                        Episode.tokens, Episode.llm_ms, Episode.sandbox_ms, Episode.started_at, Episode.finished_at
                        ).where(col(Episode.status).in_(["succeeded", "failed"]), Episode.mode == "llm",
                                col(Episode.bench_run_id).is_(None))
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


def episodes_left_out(playbook_id: Optional[str] = None) -> dict[str, int]:
    """Finished episodes the learning curves leave out, by why: runs of given code, benchmark episodes."""
    with read_session() as s:
        stmt = select(Episode.mode, col(Episode.bench_run_id).is_not(None), func.count()).where(
            col(Episode.status).in_(["succeeded", "failed"]))
        if playbook_id:
            stmt = stmt.where(Episode.playbook_id == playbook_id)
        rows = s.exec(stmt.group_by(Episode.mode, col(Episode.bench_run_id).is_not(None))).all()
    out = {"runs of given code (no model)": 0, "benchmark episodes": 0}
    for mode, in_bench, n in rows:
        if in_bench:
            out["benchmark episodes"] += n
        elif mode == "sandbox_only":
            out["runs of given code (no model)"] += n
    return {k: v for k, v in out.items() if v}


def ace_by_epoch(run_id: str) -> pd.DataFrame:
    """One benchmark run's pass rate per stage: the baseline (no playbook), then ACE epoch by epoch on the
    training tasks, then ACE on the held-out tasks. "Did ACE help?" at a glance."""
    rows = []
    for st_ in bench_progress(run_id)["stages"]:
        if st_["done"]:
            label = "baseline" if st_["arm"] == "baseline" else f"ACE epoch {st_['epoch']}"
            rows.append({"stage": label, "arm": "baseline" if st_["arm"] == "baseline" else "ACE",
                         "tasks": st_["phase"], "pass rate": st_["passed"] / st_["done"], "done": st_["done"]})
    return pd.DataFrame(rows, columns=["stage", "arm", "tasks", "pass rate", "done"])


def versions_frame(playbook_id: Optional[str] = None) -> pd.DataFrame:
    with read_session() as s:
        stmt = select_columns(PlaybookVersion.playbook_id, PlaybookVersion.number, PlaybookVersion.bullet_count,
                        PlaybookVersion.token_count, PlaybookVersion.created_at, PlaybookVersion.summary,
                        PlaybookVersion.delta_id)
        if playbook_id:
            stmt = stmt.where(PlaybookVersion.playbook_id == playbook_id)
        rows = s.exec(stmt.order_by(PlaybookVersion.playbook_id, col(PlaybookVersion.number))).all()
    return pd.DataFrame(rows, columns=["playbook", "version", "bullets", "tokens", "created", "summary", "delta"])
