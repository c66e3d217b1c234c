"""A durable job queue in the database.

Episodes, learn requests and benchmark runs are jobs, so closing the browser
does not stop a run and any number of viewers can watch one. A worker beats a
heartbeat while it runs a job; a job whose heartbeat goes stale (its worker
was killed) is queued again while it has attempts left, and otherwise marked
failed with the reason. Two workers never take the same job: claims are
serialised by SQLite's write lock, or skip each other's locked rows on
PostgreSQL (`FOR UPDATE SKIP LOCKED`). Heartbeats and staleness use the
database's clock, so workers on hosts whose clocks differ judge alike.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import update
from sqlmodel import Session, col, select

from core.config import get_settings
from core.errors import Conflict, Missing
from core.interrupts import Interrupt, Interrupted
from core.storage.db import db_clock, read_session, row_writer, write_session
from core.storage.models import Job, utcnow


class Cancelled(Interrupted):
    """Raised inside a job when someone asked to cancel it (between steps; an `Interrupted` from inside a
    step, a model call or a program, means the same)."""


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


def _locked(s: Session, job_id: str) -> Optional[Job]:
    """The job row, read fresh and held until the transaction ends: two writers (a worker finishing, a
    person cancelling) take turns instead of one overwriting what the other just wrote."""
    stmt = select(Job).where(Job.id == job_id).with_for_update(key_share=True)
    return s.exec(stmt.execution_options(populate_existing=True)).first()


def claim(worker_id: str, kinds: Optional[list[str]] = None) -> Optional[Job]:
    """Take the oldest queued job. On PostgreSQL, `FOR UPDATE SKIP LOCKED`: workers claiming at once each
    get a different job and never wait on one another; on SQLite the write lock serialises claims."""
    with write_session() as s:
        stmt = select(Job).where(Job.status == "queued")
        if kinds:
            stmt = stmt.where(col(Job.kind).in_(kinds))
        stmt = stmt.order_by(col(Job.created_at)).limit(1).with_for_update(skip_locked=True)
        job = s.exec(stmt).first()
        if job is None:
            return None
        now = db_clock(s)
        s.execute(update(Job).where(col(Job.id) == job.id).values(
            status="running", worker_id=worker_id, attempts=Job.attempts + 1, started_at=now, heartbeat_at=now,
            error=None))
        s.refresh(job)
        return job


def update_payload(job_id: str, payload: dict[str, Any]) -> None:
    with write_session() as s:
        s.execute(update(Job).where(col(Job.id) == job_id).values(payload=payload))


def heartbeat(job_id: str, attempt: Optional[int] = None) -> Optional[bool]:
    """Refresh the heartbeat (the database's clock); True when cancellation was requested, None when the run
    is no longer this worker's.

    `attempt`: the run that beats. A worker judged stale whose job another worker took over must not keep
    that run's heartbeat fresh (nobody would notice the new worker die): its beat changes nothing, and it
    learns that it should stop."""
    with write_session() as s:
        stmt = update(Job).where(col(Job.id) == job_id)
        if attempt is not None:
            stmt = stmt.where(col(Job.attempts) == attempt, col(Job.status) == "running")
        found = s.execute(stmt.values(heartbeat_at=db_clock(s)).returning(col(Job.cancel_requested))).first()
        return None if found is None else bool(found[0])


TAKEN_OVER = "another worker took this job over (this one was judged stale)"
_running: dict[str, Interrupt] = {}  # job id -> its interrupt, for the jobs this process runs
_running_lock = threading.Lock()


@contextmanager
def running(job_id: str, interrupt: Interrupt) -> Iterator[None]:
    """Register the job as run here, so a cancel asked in this process interrupts it at once."""
    with _running_lock:
        _running[job_id] = interrupt
    try:
        yield
    finally:
        with _running_lock:
            _running.pop(job_id, None)


def cancel_requested(job_id: Optional[str]) -> bool:
    if not job_id:
        return False
    with read_session() as s:
        job = s.get(Job, job_id)
        return bool(job and job.cancel_requested)


def cancel(job_id: str) -> str:
    """Queued jobs stop at once; running ones within a second, whatever they are doing: in this process
    through its interrupt, elsewhere through NOTIFY (PostgreSQL) or the job's own reads (SQLite)."""
    with write_session() as s:
        job = _locked(s, job_id)
        if job is None:
            raise Missing(f"job {job_id!r} does not exist")
        if job.status == "queued":
            job.status, job.finished_at, job.error = "cancelled", utcnow(), "cancelled before it started"
        elif job.status == "running":
            job.cancel_requested = True
        s.add(job)
        status = job.status
    with _running_lock:
        here = _running.get(job_id)
    if here is not None and status == "running":
        here.set()  # run by this process: stop it now (others hear of it by NOTIFY or their own reads)
    return status


def retry(job_id: str) -> None:
    """Queue a failed job again (a learn request after the model came back)."""
    with write_session() as s:
        job = _locked(s, job_id)
        if job is None:
            raise Missing(f"job {job_id!r} does not exist")
        if job.status not in ("failed", "cancelled"):
            raise NotRetryable(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        job.status, job.error, job.cancel_requested, job.finished_at = "queued", None, False, None
        job.max_attempts = job.attempts + 1
        s.add(job)


def finish(job_id: str, status: str, result: Optional[dict[str, Any]] = None, error: Optional[str] = None,
           attempt: Optional[int] = None) -> bool:
    """Record how the job ended; False when it was no longer this run's to end.

    `attempt`: the attempt that is ending (the claimed job's `attempts`). A worker that was judged stale
    (its job requeued and claimed again elsewhere) but was only slow must not overwrite the new run."""
    with write_session() as s:
        stmt = update(Job).where(col(Job.id) == job_id)
        if attempt is not None:
            stmt = stmt.where(col(Job.attempts) == attempt, col(Job.status) == "running")
        ended = None if status == "queued" else db_clock(s)  # queued again: it has not ended
        done = s.execute(stmt.values(status=status, result=result, error=error, finished_at=ended))
        return bool(done.rowcount)  # type: ignore[attr-defined]


def recover_stale(stale_after_s: Optional[float] = None) -> list[str]:
    """Requeue or fail running jobs whose worker stopped beating (judged by the database's clock). Rows
    another process is recovering (or whose worker is writing) are skipped, not waited for."""
    if stale_after_s is None:
        stale_after_s = get_settings().job_stale_seconds
    touched = []
    with write_session() as s:
        cutoff = db_clock(s) - timedelta(seconds=stale_after_s)
        stmt = select(Job).where(Job.status == "running", col(Job.heartbeat_at) < cutoff)
        for job in s.exec(stmt.with_for_update(skip_locked=True)):
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
        recovered(job_id)
    return touched


_recover_hooks: list[Callable[[Job], None]] = []


def on_recovered(hook: Callable[[Job], None]) -> None:
    """Called for each stale job found, so its episode can say what happened."""
    _recover_hooks.append(hook)


def recovered(job_id: str) -> None:
    """Tell the hooks that this job's run was cut short (and whether it runs again: its status)."""
    job = get_job(job_id)
    for hook in _recover_hooks:
        if job is not None:
            hook(job)
