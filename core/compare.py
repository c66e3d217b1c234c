"""Two episodes side by side: what each was asked, what it wrote attempt by attempt, what it retrieved and
used, what it concluded and learned, and what it cost. And the pairs a benchmark run makes (the baseline
and ACE on the same task), the comparison a stakeholder asks for first."""

import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from sqlmodel import col, select

from core.bench.results import results as run_results
from core.storage.db import read_session
from core.storage.models import Delta, DeltaOp, Episode, Event, Reflection


@dataclass
class AttemptView:
    n: int
    code: str
    passed: Optional[bool]
    verdict: str  # "3/3 checks", "no tests: judged by exit code", "no code", ...


@dataclass
class Side:
    """One episode as the comparison shows it."""

    episode: Episode
    attempts: list[AttemptView] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    reflection: Optional[Reflection] = None
    delta: Optional[Delta] = None
    ops: list[DeltaOp] = field(default_factory=list)

    @property
    def seconds(self) -> Optional[float]:
        ep = self.episode
        return (ep.finished_at - ep.started_at).total_seconds() if ep.started_at and ep.finished_at else None

    @property
    def final_code(self) -> str:
        return next((a.code for a in reversed(self.attempts) if a.code), self.episode.code or "")


def side(episode_id: str) -> Optional[Side]:
    """The episode with its attempts, retrieval, reflection and delta; None when it does not exist."""
    with read_session() as s:
        ep = s.get(Episode, episode_id)
        if ep is None:
            return None
        events = list(s.exec(select(Event).where(Event.episode_id == episode_id).order_by(col(Event.seq))))
        refl = s.exec(select(Reflection).where(Reflection.episode_id == episode_id)).first()
        delta = s.get(Delta, ep.delta_id) if ep.delta_id else None
        ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta.id).order_by(col(DeltaOp.seq)))) \
            if delta is not None else []
    out = Side(ep, reflection=refl, delta=delta, ops=ops)
    by_attempt: dict[int, dict[str, Any]] = {}
    for e in events:
        p = e.payload or {}
        slot = by_attempt.setdefault(e.attempt or 0, {})
        if e.kind == "generate":
            slot["code"] = p.get("code") or ""
            for r in p.get("retrieved") or []:
                if r.get("id") not in out.retrieved:
                    out.retrieved.append(str(r.get("id")))
            for b in p.get("bullet_ids") or []:
                if b not in out.used:
                    out.used.append(str(b))
        elif e.kind == "execute" and not slot.get("code"):  # a run of given code has no generate step
            slot["code"] = p.get("code") or ""
        elif e.kind == "evaluate":
            slot["passed"] = bool(p.get("passed"))
            total, failed = int(p.get("total") or 0), len(p.get("failed") or [])
            slot["verdict"] = f"{total - failed}/{total} checks" if total else "no tests: judged by exit code"
    for n in sorted(k for k in by_attempt if k):
        a = by_attempt[n]
        out.attempts.append(AttemptView(n, a.get("code", ""), a.get("passed"),
                                        a.get("verdict", "no code" if not a.get("code") else "not run")))
    return out


def code_diff(a: str, b: str, left: str = "A", right: str = "B") -> str:
    """A unified diff of two programs (empty when they are the same)."""
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                        fromfile=left, tofile=right))


def bench_pairs(run_id: str) -> pd.DataFrame:
    """One row per task of a benchmark run's held-out split: the baseline's episode and ACE's, and whether
    each passed. The comparison to open first: the same task without and with the playbook."""
    rows: dict[str, dict[str, Any]] = {}
    for r in run_results(run_id):
        if r.phase != "test" or not r.episode_id:
            continue
        row = rows.setdefault(r.task_key, {"task": r.task_key})
        arm = "baseline" if r.arm == "baseline" else "ace"
        row[f"{arm}_episode"], row[f"{arm}_passed"] = r.episode_id, bool(r.success)
    cols = ["task", "baseline_episode", "baseline_passed", "ace_episode", "ace_passed"]
    return pd.DataFrame(list(rows.values()), columns=cols)
