"""The worker entry point: which code runs each job kind, wired into the queue.

The queue (`core.jobs`) knows no job kinds. Every process that runs jobs (the app,
`ace worker`, the service) calls `register_handlers()` first, through `run` or
`start_in_background`.
"""

import threading
from typing import Any, Optional

from core import jobs
from core.bench import runner as bench
from core.episodes import learning, loop, store
from core.storage.models import Job

_registered = False
_lock = threading.Lock()


def run_episode_job(job: Job) -> dict[str, Any]:
    spec = loop.TaskSpec.model_validate(job.payload["spec"])
    result = loop.run_episode(spec, episode_id=job.payload.get("episode_id"), job_id=job.id)
    if result.status == "error":
        raise RuntimeError(result.error or "the episode failed")
    return {"episode_id": result.episode_id, "status": result.status, "success": result.success,
            "attempts": result.attempts, "delta_id": result.delta_id, "version": result.version}


def run_learn_job(job: Job) -> dict[str, Any]:
    p = dict(job.payload)
    if not p.get("episode_id"):  # one episode per learn request, kept across retries
        p["episode_id"] = store.episode_of_job(job.id) or learning.create_learn_episode(
            p["playbook_id"], p.get("user_message") or "", p.get("ground_truth"), job.id).id
        jobs.update_payload(job.id, p)
    return learning.learn(p["playbook_id"], p.get("user_message") or "", p.get("trajectory") or "",
                          ground_truth=p.get("ground_truth"), evaluation=p.get("evaluation"),
                          reflector_instructions=p.get("reflector_additional_instructions") or "",
                          curator_instructions=p.get("curator_additional_instructions") or "", job_id=job.id,
                          episode_id=p.get("episode_id"))


def register_handlers() -> None:
    """Wire every job kind and its recovery hook into the queue, once per process."""
    global _registered
    with _lock:
        if _registered:
            return
        jobs.register("episode", run_episode_job)
        jobs.register("learn", run_learn_job)
        jobs.register("bench", bench.run_bench_job)
        jobs.on_recovered(store.mark_interrupted)
        jobs.on_recovered(bench.mark_job_interrupted)
        _registered = True


def run(stop: Optional[threading.Event] = None, **options: Any) -> int:
    """Drain the queue in this thread (`ace worker`); returns the number of jobs run."""
    register_handlers()
    return jobs.run_worker(stop, **options)


def start_in_background() -> threading.Thread:
    """The one worker thread of this process (the app and the service run jobs in it)."""
    register_handlers()
    return jobs.ensure_background_worker()
