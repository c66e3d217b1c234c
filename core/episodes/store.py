"""Episode rows: created before an episode runs (so a queued one can be watched), updated as it ends."""

import time
from typing import Any, Optional

from sqlmodel import col, select

from core import jobs
from core.config import Settings, get_settings
from core.episodes.events import ErrorPayload
from core.episodes.spec import TaskSpec
from core.episodes.trace import EPISODES, Trace
from core.playbook import get_or_create_playbook, validate_playbook_id
from core.playbook.routing import route
from core.storage.db import fetch, query_row, read_session, row_writer
from core.storage.models import Delta, Episode, Event


def update_episode(episode_id: str, **values: Any) -> None:
    """One plain UPDATE of the episode's row (no ORM round trip on the loop's hot path)."""
    with row_writer() as w:
        w.update(EPISODES, {"id": episode_id}, values)


def new_episode(spec: TaskSpec, settings: Optional[Settings] = None, job_id: Optional[str] = None) -> Episode:
    """The episode's row, playbook chosen and why, not yet stored: a caller may store it with rows of its own."""
    settings = settings or get_settings()
    if spec.playbook_id:
        env, reason = None, f"playbook '{spec.playbook_id}' chosen by the user"
        pid = spec.playbook_id
    else:
        r = route(spec.task, spec.language)
        env, reason, pid = r.environment, r.reason, r.environment
    found = query_row("SELECT review_mode FROM playbook WHERE id = ?", (validate_playbook_id(pid),))
    pb_review = found[0] if found is not None else get_or_create_playbook(pid, environment=env).review_mode
    ep = Episode(playbook_id=pid, task=spec.task, language=spec.language, tests=spec.tests,
                 expected_output=spec.expected_output, ground_truth=spec.ground_truth, mode=spec.mode,
                 max_iterations=spec.max_iterations or settings.max_iterations,
                 review_mode=spec.review_mode or pb_review or settings.review_mode,
                 routing_reason=reason, backend=spec.backend or settings.sandbox_backend,
                 model=settings.model if spec.mode == "llm" else "", code=spec.code, job_id=job_id,
                 bench_run_id=spec.bench_run_id, rerun_of=spec.rerun_of, workflow=spec.workflow)
    return ep


def create_episode(spec: TaskSpec, settings: Optional[Settings] = None, job_id: Optional[str] = None) -> Episode:
    """Record the episode before it runs, with its playbook chosen and why."""
    ep = new_episode(spec, settings, job_id)
    with row_writer() as w:  # a plain INSERT
        w.add([ep])
    return ep


def submit_episode(spec: TaskSpec) -> tuple[str, str]:
    """Queue an episode for a worker; returns (episode id, job id).

    The episode and its job are stored in one transaction: a process killed in between leaves
    neither, never an episode waiting for a job nobody queued."""
    ep = new_episode(spec)
    job = jobs.new_job("episode", {"episode_id": ep.id, "spec": spec.model_dump()}, max_attempts=2)
    ep.job_id = job.id
    with row_writer() as w:
        w.add([job, ep])
    return ep.id, job.id


def rerun_spec(episode_id: str) -> TaskSpec:
    """What the episode was asked, as a spec to edit and run again (it links back to this episode): its task,
    tests, expected output, playbook and settings, or its code for a run of given code."""
    ep = load_episode(episode_id)
    return TaskSpec(task=ep.task, language=ep.language, tests=ep.tests, expected_output=ep.expected_output,
                    ground_truth=ep.ground_truth, playbook_id=ep.playbook_id, max_iterations=ep.max_iterations,
                    review_mode=ep.review_mode, mode=ep.mode if ep.mode in ("llm", "sandbox_only") else "llm",
                    code=ep.code if ep.mode == "sandbox_only" else None, workflow=ep.workflow,
                    rerun_of=ep.id)


def cancel_episode(episode_id: str, wait_s: float = 2.0) -> str:
    """Cancel the episode's job and wait (at most `wait_s`) until the episode has ended, so the caller can
    show the outcome at once instead of a "running" that is no longer true. Returns the episode's status."""
    ep = load_episode(episode_id)
    if ep.job_id and ep.status in ("queued", "running"):
        jobs.cancel(ep.job_id)
        deadline = time.monotonic() + wait_s
        while ep.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
            ep = load_episode(episode_id)
    return ep.status


def check_cancel(job_id: Optional[str]) -> None:
    """Stop between steps when someone asked to cancel this episode's job."""
    if jobs.cancel_requested(job_id):
        raise jobs.Cancelled()


def episode_of_job(job_id: str) -> Optional[str]:
    """The episode a job already created, if any: a worker killed between creating it and saying so in the
    job's payload leaves one, and the retry must take it over rather than make a second."""
    with read_session() as s:
        return s.exec(select(Episode.id).where(Episode.job_id == job_id).order_by(col(Episode.created_at))).first()


def learned_delta(ep: Episode) -> Optional[str]:
    """The delta an episode already produced, if any (its row may not say so if a worker died)."""
    if ep.delta_id:
        return ep.delta_id
    with read_session() as s:
        return s.exec(select(Delta.id).where(Delta.episode_id == ep.id)).first()


def load_episode(episode_id: str) -> Episode:
    return fetch(Episode, episode_id, "episode")


# ----------------------------------------------------------------- learning

def episode_events(episode_id: str, after_seq: int = 0) -> list[Event]:
    """The trace from `after_seq` on, in order (a live view polls with the last seq it has)."""
    with read_session() as s:
        stmt = select(Event).where(Event.episode_id == episode_id, Event.seq > after_seq).order_by(col(Event.seq))
        return list(s.exec(stmt))


def mark_interrupted(job: Any) -> None:
    """A worker died under this job's episode: say so in its trace."""
    episode_id = (job.payload or {}).get("episode_id")
    if not episode_id:
        return
    msg = "the worker running this episode stopped (killed?); " + (
        "it will be run again" if job.status == "queued" else "no attempts are left")
    if job.error and "database" in job.error:  # its worker lives on; the database went away under it
        msg = job.error
    Trace(episode_id).emit("error", ErrorPayload(step="worker", message=msg))
    update_episode(episode_id, status="queued" if job.status == "queued" else "error",
                    error=None if job.status == "queued" else msg)
