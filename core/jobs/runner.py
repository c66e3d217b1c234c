"""The worker loop: claim a queued job, run the handler registered for its kind, record how it ended.

The queue knows no job kinds: entry points (`core.worker`) register a handler per kind before
they start a worker, so this package imports only storage.
"""

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any, Optional

from core.jobs.queue import Cancelled, claim, finish, heartbeat, recover_stale
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
        finish(job.id, "done", result=result)
    except Cancelled:
        finish(job.id, "cancelled", error="cancelled by request")
    except Exception as exc:
        log.warning("job %s failed: %s", job.id, exc)
        finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        log.debug("%s", traceback.format_exc())
    finally:
        stop.set()


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


def run_worker(stop: Optional[threading.Event] = None, poll_s: float = 0.5, kinds: Optional[list[str]] = None,
               max_jobs: Optional[int] = None, stale_after_s: Optional[float] = None) -> int:
    """Drain the queue until `stop` is set (or `max_jobs` ran); returns jobs run."""
    kinds = claimable(kinds)
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
