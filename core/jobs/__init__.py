"""The durable job queue and the worker loop that drains it.

It imports only storage and settings: entry points (`core.worker`) register a handler for each
job kind before they start a worker.
"""

from core.jobs.queue import (
    TAKEN_OVER,
    Cancelled,
    cancel,
    cancel_requested,
    claim,
    enqueue,
    finish,
    get_job,
    heartbeat,
    list_jobs,
    new_job,
    on_recovered,
    recover_stale,
    retry,
    update_payload,
)
from core.jobs.runner import (
    HEARTBEAT_S,
    Handler,
    NoHandlers,
    claimable,
    ensure_background_worker,
    register,
    registered_kinds,
    run_one,
    run_worker,
    stop_background_worker,
    worker_id,
)

__all__ = [
    "HEARTBEAT_S", "TAKEN_OVER", "Cancelled", "Handler", "NoHandlers", "cancel", "cancel_requested", "claim",
    "claimable", "enqueue",
    "ensure_background_worker", "finish", "get_job", "heartbeat", "list_jobs", "new_job", "on_recovered",
    "recover_stale", "register", "registered_kinds", "retry", "run_one", "run_worker", "stop_background_worker",
    "update_payload", "worker_id",
]
