"""A durable job queue in the database.

Episodes, learn requests and benchmark runs are jobs, so closing the browser
does not stop a run and any number of viewers can watch one. A worker beats a
heartbeat while it runs a job; a job whose heartbeat goes stale (its worker
was killed) is queued again while it has attempts left, and otherwise marked
failed with the reason. Claiming happens in one BEGIN IMMEDIATE transaction,
so two workers never take the same job. (On PostgreSQL this function is the
place for `FOR UPDATE SKIP LOCKED`.)
"""

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Optional

from sqlmodel import col, select

from core.config import get_settings
from core.errors import Conflict
from core.storage.db import fetch, read_session, row_writer, write_session
from core.storage.models import Job, utcnow


class Cancelled(Exception):
    """Raised inside a job when someone asked to cancel it."""


class NotRetryable(Conflict, ValueError):
    """Only a failed or cancelled job can be queued again; a ValueError too, as callers caught before."""


def new_job(kind: str, payload: dict[str, Any], max_attempts: int = 2, job_id: Optional[str] = None) -> Job:
    """A queued job's row, not yet stored: a caller may store it with the rows that refer to it."""
    job = Job(kind=kind, payload=payload, max_attempts=max_attempts)
    if job_id:
        job.id = job_id
    return job


def enqueue(kind: str, payload: dict[str, Any], max_attempts: int = 2, job_id: Optional[str] = None) -> str:
    job = new_job(kind, payload, max_attempts, job_id)
    with row_writer() as w:
        w.add([job])
    return job.id


def get_job(job_id: str) -> Optional[Job]:
    with read_session() as s:
        return s.get(Job, job_id)


def list_jobs(kind: Optional[str] = None, limit: int = 100) -> list[Job]:
    with read_session() as s:
        stmt = select(Job)
        if kind:
            stmt = stmt.where(Job.kind == kind)
        return list(s.exec(stmt.order_by(Job.created_at.desc()).limit(limit)))  # type: ignore[attr-defined]


def claim(worker_id: str, kinds: Optional[list[str]] = None) -> Optional[Job]:
    with write_session() as s:
        stmt = select(Job).where(Job.status == "queued")
        if kinds:
            stmt = stmt.where(Job.kind.in_(kinds))  # type: ignore[attr-defined]
        job = s.exec(stmt.order_by(col(Job.created_at)).limit(1)).first()
        if job is None:
            return None
        now = utcnow()
        job.status, job.worker_id, job.attempts = "running", worker_id, job.attempts + 1
        job.started_at, job.heartbeat_at, job.error = now, now, None
        s.add(job)
        return job


def update_payload(job_id: str, payload: dict[str, Any]) -> None:
    with write_session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            job.payload = payload
            s.add(job)


def heartbeat(job_id: str) -> bool:
    """Refresh the heartbeat; True when cancellation was requested."""
    with write_session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return True
        job.heartbeat_at = utcnow()
        s.add(job)
        return job.cancel_requested


def cancel_requested(job_id: Optional[str]) -> bool:
    if not job_id:
        return False
    with read_session() as s:
        job = s.get(Job, job_id)
        return bool(job and job.cancel_requested)


def cancel(job_id: str) -> str:
    """Queued jobs stop at once; running ones at their next step."""
    with write_session() as s:
        job = fetch(Job, job_id, "job", s)
        if job.status == "queued":
            job.status, job.finished_at, job.error = "cancelled", utcnow(), "cancelled before it started"
        elif job.status == "running":
            job.cancel_requested = True
        s.add(job)
        return job.status


def retry(job_id: str) -> None:
    """Queue a failed job again (a learn request after the model came back)."""
    with write_session() as s:
        job = fetch(Job, job_id, "job", s)
        if job.status not in ("failed", "cancelled"):
            raise NotRetryable(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        job.status, job.error, job.cancel_requested, job.finished_at = "queued", None, False, None
        job.max_attempts = job.attempts + 1
        s.add(job)


def finish(job_id: str, status: str, result: Optional[dict[str, Any]] = None, error: Optional[str] = None) -> None:
    with write_session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        job.status, job.result, job.error, job.finished_at = status, result, error, utcnow()
        s.add(job)


def recover_stale(stale_after_s: Optional[float] = None) -> list[str]:
    """Requeue or fail running jobs whose worker stopped beating."""
    if stale_after_s is None:
        stale_after_s = get_settings().job_stale_seconds
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    touched = []
    with write_session() as s:
        for job in s.exec(select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)):  # type: ignore[operator]
            if job.cancel_requested:
                job.status, job.error = "cancelled", "cancelled; its worker stopped"
            elif job.attempts < job.max_attempts:
                job.status, job.error = "queued", f"worker {job.worker_id} stopped mid-run; retrying"
            else:
                job.status = "failed"
                job.error = f"worker {job.worker_id} stopped mid-run (killed?) and no attempts are left"
            job.finished_at = utcnow() if job.status != "queued" else None
            s.add(job)
            touched.append(job.id)
    for job_id in touched:
        _on_recovered(job_id)
    return touched


_recover_hooks: list[Callable[[Job], None]] = []


def on_recovered(hook: Callable[[Job], None]) -> None:
    """Called for each stale job found, so its episode can say what happened."""
    _recover_hooks.append(hook)


def _on_recovered(job_id: str) -> None:
    job = get_job(job_id)
    for hook in _recover_hooks:
        if job is not None:
            hook(job)
