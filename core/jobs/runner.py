"""The worker loop: claim a queued job, run the handler registered for its kind, record how it ended.

The queue knows no job kinds: entry points (`core.worker`) register a handler per kind before
they start a worker, so this package imports only storage.
"""

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Optional

from sqlalchemy.exc import OperationalError

from core.interrupts import Interrupt, Interrupted, interruptible
from core.jobs.queue import TAKEN_OVER, cancel_requested, claim, finish, heartbeat, recover_stale, recovered, running
from core.storage import wakeups
from core.storage.db import get_engine
from core.storage.models import Job

log = logging.getLogger("ace.jobs")
HEARTBEAT_S = 2.0

Handler = Callable[[Job], dict[str, Any]]
_handlers: dict[str, Handler] = {}


class NoHandlers(RuntimeError):
    """A worker started in a process that registered no job kind: it would fail every job it took."""


def register(kind: str, handler: Handler) -> None:
    """Run `handler` for jobs of `kind`; a worker fails jobs whose kind nobody registered."""
    _handlers[kind] = handler


def registered_kinds() -> list[str]:
    return sorted(_handlers)


def run_one(job: Job) -> None:
    handler = _handlers.get(job.kind)
    if handler is None:
        finish(job.id, "failed", error=f"no handler for job kind {job.kind!r}")
        return
    stop = threading.Event()
    interrupt = Interrupt()
    watchers = [threading.Thread(target=_beat, args=(job, interrupt, stop), name=f"heartbeat-{job.id}", daemon=True),
                threading.Thread(target=_watch_cancel, args=(job, interrupt, stop), name=f"cancel-{job.id}",
                                 daemon=True)]
    for t in watchers:
        t.start()
    try:
        with running(job.id, interrupt), interruptible(interrupt):
            result = handler(job)
        _finish(job, "done", result=result)
    except Interrupted as exc:
        if exc.reason != TAKEN_OVER:  # a run another worker took over is not this one's to end
            _finish(job, "cancelled", error="cancelled by request")
    except OperationalError as exc:
        if not _connection_lost(exc):
            log.warning("job %s failed: %s", job.id, exc)
            _finish(job, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            return
        again = job.attempts < job.max_attempts  # the database went away under the job (a restart)
        reason = (f"the database connection was lost mid-run ({type(exc.orig).__name__}); "
                  + ("retrying" if again else "no attempts are left"))
        log.warning("job %s: %s", job.id, reason)
        if _finish(job, "queued" if again else "failed", error=reason):
            try:
                recovered(job.id)
            except Exception as hook_exc:  # the database may still be flapping: the job is queued anyway
                log.warning("job %s: telling its episode failed (%s)", job.id, type(hook_exc).__name__)
    except Exception as exc:
        log.warning("job %s failed: %s", job.id, exc)
        _finish(job, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        log.debug("%s", traceback.format_exc())
    finally:
        stop.set()


CANCEL_CHECK_S = 0.25  # a cancel stops the job within this (plus the step's own wind-down)


def _beat(job: Job, interrupt: Interrupt, stop: threading.Event) -> None:
    """Beat the heartbeat; a cancel asked on any host stops the job at the latest here."""
    while not stop.wait(HEARTBEAT_S):
        try:
            state = heartbeat(job.id, job.attempts)
        except Exception:  # a locked DB for a moment must not kill the beat
            log.exception("heartbeat failed")
            continue
        if state is None:  # judged stale and taken over elsewhere: stop this duplicate run
            interrupt.set(TAKEN_OVER)
        elif state:
            interrupt.set()


def _watch_cancel(job: Job, interrupt: Interrupt, stop: threading.Event) -> None:
    """Learn of a cancel within a second: PostgreSQL notifies this job's id; SQLite, on this host by nature,
    is read a few times a second (a local read of one row)."""
    engine = get_engine()
    waiter = wakeups.waiter(engine, wakeups.CANCEL, job.id)
    notified = engine.dialect.name == "postgresql"
    try:
        while not stop.is_set() and not interrupt.is_set():
            woke = waiter.wait(CANCEL_CHECK_S if not notified else HEARTBEAT_S)
            if stop.is_set() or not (woke or not notified):
                continue
            try:
                if cancel_requested(job.id):
                    interrupt.set()
            except Exception:  # the heartbeat looks again
                pass
    finally:
        waiter.close()


def _connection_lost(exc: OperationalError) -> bool:
    """A dropped or refused connection (the server restarting), not an error in the statement."""
    if exc.connection_invalidated:
        return True
    try:
        import psycopg
    except ImportError:  # SQLite only: its OperationalErrors are about the file, not a connection
        return False
    return isinstance(exc.orig, psycopg.OperationalError) and not isinstance(exc.orig, psycopg.errors.QueryCanceled)


def _finish(job: Job, status: str, **outcome: Any) -> bool:
    """End this run of the job, unless it was judged stale and queued again meanwhile. The database may be
    restarting just now: try for a while (the job is retried if this run's end is never written)."""
    for delay in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        time.sleep(delay)
        try:
            if not finish(job.id, status, attempt=job.attempts, **outcome):
                log.warning("job %s was taken over by another worker; this run's end (%s) is dropped",
                            job.id, status)
                return False
            return True
        except Exception as exc:
            log.warning("recording the end of job %s failed (%s); trying again", job.id, type(exc).__name__)
    log.error("could not record the end of job %s; it will be recovered as stale", job.id)
    return False


def claimable(kinds: Optional[list[str]] = None) -> list[str]:
    """The kinds a worker here may take: the registered ones (of `kinds`, if given). A job of another kind
    stays queued for a process that can run it."""
    known = registered_kinds()
    if not known:
        raise NoHandlers("no job kind is registered in this process: start workers through core.worker "
                         "(worker.run or worker.start_in_background), which registers them first")
    return [k for k in known if kinds is None or k in kinds]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


POLL_S = {"sqlite": 0.5, "postgresql": 5.0}  # with LISTEN/NOTIFY, polling is only the safety net
STOP_CHECK_S = 0.2  # how soon an idle worker notices `stop`


def idle(stop: threading.Event, wake: wakeups.Waiter, seconds: float) -> None:
    """Wait up to `seconds` for a wake-up (a job was queued) or for `stop`."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0 or wake.wait(min(left, STOP_CHECK_S)):
            return


def run_worker(stop: Optional[threading.Event] = None, poll_s: Optional[float] = None,
               kinds: Optional[list[str]] = None, max_jobs: Optional[int] = None,
               stale_after_s: Optional[float] = None) -> int:
    """Drain the queue until `stop` is set (or `max_jobs` ran); returns jobs run.

    Idle, it looks at the queue every `poll_s` seconds (default 0.5 on SQLite, 5 on PostgreSQL), and at
    once when PostgreSQL notifies that a job was queued. A database that is away (restarting) is retried
    with growing pauses; the worker itself keeps running."""
    kinds = claimable(kinds)
    stop = stop or threading.Event()
    wid = worker_id()
    engine = get_engine()
    poll = poll_s if poll_s is not None else POLL_S.get(engine.dialect.name, 0.5)
    wake = wakeups.waiter(engine, wakeups.JOBS)
    done, failures = 0, 0
    try:
        while not stop.is_set():
            wake.clear()  # a job queued from here on wakes the wait below
            try:
                recover_stale(stale_after_s)
                job = claim(wid, kinds)
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("worker could not reach the queue (%s: %s)", type(exc).__name__, str(exc)[:200])
                stop.wait(min(0.25 * 2 ** failures, 5.0))
                continue
            if job is None:
                idle(stop, wake, poll)
                continue
            run_one(job)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
    finally:
        wake.close()
    return done


_app_worker: Optional[threading.Thread] = None
_app_stop = threading.Event()
_app_lock = threading.Lock()


def ensure_background_worker() -> threading.Thread:
    """One worker thread per process (the Streamlit app and the HTTP service use it)."""
    global _app_worker, _app_stop
    claimable()  # fail here, in the caller, rather than in the thread
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
