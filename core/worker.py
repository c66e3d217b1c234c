"""Job kinds and what runs them; imported by every worker."""

from typing import Any

from core.jobs import queue as jobs
from core.episodes import loop
from core.storage.models import Job


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
        p["episode_id"] = loop.create_learn_episode(p["playbook_id"], p.get("user_message") or "",
                                                    p.get("ground_truth"), job.id).id
        jobs.update_payload(job.id, p)
    return loop.learn(p["playbook_id"], p.get("user_message") or "", p.get("trajectory") or "",
                      ground_truth=p.get("ground_truth"), evaluation=p.get("evaluation"),
                      reflector_instructions=p.get("reflector_additional_instructions") or "",
                      curator_instructions=p.get("curator_additional_instructions") or "", job_id=job.id,
                      episode_id=p.get("episode_id"))


jobs.register("episode", run_episode_job)
jobs.register("learn", run_learn_job)
jobs.on_recovered(loop.mark_interrupted)


def run_bench_job(job: Job) -> dict[str, Any]:
    from core.bench import runner as bench

    return bench.run_bench_job(job)


def mark_bench_interrupted(job: Job) -> None:
    from core.bench import runner as bench

    bench.mark_job_interrupted(job)


jobs.register("bench", run_bench_job)
jobs.on_recovered(mark_bench_interrupted)
