"""A durable job queue in the database, and the worker that drains it.

Episodes, learn requests and benchmark runs are jobs, so closing the browser
does not stop a run and any number of viewers can watch one. A worker beats a
heartbeat while it runs a job; a job whose heartbeat goes stale (its worker
was killed) is queued again while it has attempts left, and otherwise marked
failed with the reason. Claiming happens in one BEGIN IMMEDIATE transaction,
so two workers never take the same job. (On PostgreSQL this function is the
place for `FOR UPDATE SKIP LOCKED`.)
"""

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Optional

from sqlmodel import select

from core.storage.db import read_session, row_writer, write_session
from core.storage.models import Job, utcnow

log = logging.getLogger("ace.jobs")
STALE_AFTER_S = float(os.environ.get("ACE_JOB_STALE_SECONDS", "30"))
HEARTBEAT_S = 2.0

Handler = Callable[[Job], dict[str, Any]]
_handlers: dict[str, Handler] = {}


class Cancelled(Exception):
    """Raised inside a job when someone asked to cancel it."""


def register(kind: str, handler: Handler) -> None:
    _handlers[kind] = handler


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
        job = s.exec(stmt.order_by(Job.created_at).limit(1)).first()
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
        job = s.get(Job, job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} does not exist")
        if job.status == "queued":
            job.status, job.finished_at, job.error = "cancelled", utcnow(), "cancelled before it started"
        elif job.status == "running":
            job.cancel_requested = True
        s.add(job)
        return job.status


def retry(job_id: str) -> None:
    """Queue a failed job again (a learn request after the model came back)."""
    with write_session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} does not exist")
        if job.status not in ("failed", "cancelled"):
            raise ValueError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        job.status, job.error, job.cancel_requested, job.finished_at = "queued", None, False, None
        job.max_attempts = job.attempts + 1
        s.add(job)


def _finish(job_id: str, status: str, result: Optional[dict[str, Any]] = None, error: Optional[str] = None) -> None:
    with write_session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        job.status, job.result, job.error, job.finished_at = status, result, error, utcnow()
        s.add(job)


def _load_handlers() -> None:
    import core.worker  # noqa: F401  (registers the job kinds and recovery hooks)


def recover_stale(stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Requeue or fail running jobs whose worker stopped beating."""
    _load_handlers()
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


def run_one(job: Job) -> None:
    handler = _handlers.get(job.kind)
    if handler is None:
        _finish(job.id, "failed", error=f"no handler for job kind {job.kind!r}")
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                heartbeat(job.id)
            except Exception:  # a locked DB for a moment must not kill the beat
                log.exception("heartbeat failed")

    t = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
    t.start()
    try:
        result = handler(job)
        _finish(job.id, "done", result=result)
    except Cancelled:
        _finish(job.id, "cancelled", error="cancelled by request")
    except Exception as exc:
        log.warning("job %s failed: %s", job.id, exc)
        _finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        log.debug("%s", traceback.format_exc())
    finally:
        stop.set()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


def run_worker(stop: Optional[threading.Event] = None, poll_s: float = 0.5, kinds: Optional[list[str]] = None,
               max_jobs: Optional[int] = None, stale_after_s: float = STALE_AFTER_S) -> int:
    """Drain the queue until `stop` is set (or `max_jobs` ran); returns jobs run."""
    _load_handlers()
    stop = stop or threading.Event()
    wid = worker_id()
    done = 0
    while not stop.is_set():
        try:
            recover_stale(stale_after_s)
            job = claim(wid, kinds)
        except Exception:
            log.exception("worker could not reach the queue")
            stop.wait(poll_s * 4)
            continue
        if job is None:
            stop.wait(poll_s)
            continue
        run_one(job)
        done += 1
        if max_jobs is not None and done >= max_jobs:
            break
    return done


_app_worker: Optional[threading.Thread] = None
_app_stop = threading.Event()
_app_lock = threading.Lock()


def ensure_background_worker() -> threading.Thread:
    """One worker thread per process (the Streamlit app and the HTTP service use it)."""
    global _app_worker, _app_stop
    with _app_lock:
        if _app_worker is None or not _app_worker.is_alive():
            _app_stop = threading.Event()
            _app_worker = threading.Thread(target=run_worker, kwargs={"stop": _app_stop}, name="ace-worker",
                                           daemon=True)
            _app_worker.start()
        return _app_worker


def stop_background_worker(timeout: float = 30.0) -> None:
    """Stop the in-process worker after its current job (tests; clean shutdowns)."""
    global _app_worker
    with _app_lock:
        worker, _app_worker = _app_worker, None
        _app_stop.set()
    if worker is not None:
        worker.join(timeout)
