"""The one ACE loop: route, generate, execute, evaluate, refine, reflect, curate.

The UI, the CLI, the benchmark runner and the HTTP service all come through
here (`run_episode`; `core.episodes.learning.learn` for trajectories produced
elsewhere). Every step is written to the trace as it happens (`core.episodes.trace`),
so a viewer in another process can follow a running episode. A failure at any
step ends the episode with an `error` event; what was recorded stays.
"""

import time
from contextlib import ExitStack, closing
from typing import Any, Optional

from core.config import Settings, get_settings
from core.episodes.events import EventSink, GeneratePayload, RetrievedBullet, RoutePayload
from core.episodes.learning import reflect_and_curate
from core.episodes.outcome import Progress, recorded_ending
from core.episodes.review import run_review_episode
from core.episodes.spec import EpisodeResult, Roles, TaskSpec
from core.episodes.store import check_cancel, create_episode, learned_delta, load_episode, update_episode
from core.episodes.trace import OutputStream, Trace, record_run
from core.playbook import render, retrieve
from core.roles import Attempt
from core.sandbox import get_sandbox
from core.sandbox.evaluate import evaluate
from core.storage.models import Episode, utcnow

__all__ = ["EpisodeResult", "Roles", "TaskSpec", "run_episode"]


def run_episode(spec: TaskSpec, *, episode_id: Optional[str] = None, roles: Optional[Roles] = None,
                sandbox: Any = None, job_id: Optional[str] = None, settings: Optional[Settings] = None,
                on_event: Optional[EventSink] = None, episode: Optional[Episode] = None) -> EpisodeResult:
    """Run one episode to the end and return how it went; never raises for the task's faults.

    `episode_id`: an episode recorded earlier (a queued or retried job); `episode`: one the caller
    has just stored (`create_episode`, or with rows of its own), so it is not read back.
    """
    if spec.workflow == "review" and spec.mode == "llm":
        return run_review_episode(spec, episode_id=episode_id or (episode.id if episode else None), roles=roles,
                                  sandbox=sandbox, job_id=job_id, settings=settings, on_event=on_event)
    settings = settings or get_settings()
    fresh = episode is not None or not episode_id
    ep = episode or (load_episode(episode_id) if episode_id else create_episode(spec, settings, job_id))
    trace = Trace(ep.id, on_event)
    learned = None if fresh else learned_delta(ep)  # a new episode has learned nothing yet
    if learned:  # a retried job whose first run already learned: do not learn twice
        return EpisodeResult(ep.id, ep.status, ep.success, ep.attempts, ep.playbook_id, ep.code, learned)
    trace.emit("route", RoutePayload(playbook_id=ep.playbook_id, reason=ep.routing_reason, review_mode=ep.review_mode,
                                     backend=ep.backend, model=ep.model, mode=spec.mode),
               episode={"status": "running", "started_at": utcnow(), "job_id": job_id or ep.job_id})
    result = EpisodeResult(ep.id, "running", None, 0, ep.playbook_id)
    progress = Progress()
    with recorded_ending(trace, result, progress), ExitStack() as owned:
        if spec.mode == "llm" and roles is None:
            progress.step = "configure"
            roles = Roles.from_settings(settings)
        progress.step = "sandbox"
        if sandbox is None:
            sandbox = owned.enter_context(closing(get_sandbox(spec.backend, settings)))
        attempts = _attempts(spec, ep, trace, roles, sandbox, settings, progress, job_id)
        passed = bool(attempts) and attempts[-1].passed
        result.success, result.attempts, result.code = passed, len(attempts), attempts[-1].code if attempts else None
        if spec.mode == "llm" and spec.learn and roles is not None:
            outcome = (f"succeeded on attempt {len(attempts)} of {ep.max_iterations}" if passed
                       else f"failed after {len(attempts)} attempts")
            progress.step = "reflect"
            used = attempts[-1].bullet_ids if attempts else []
            learned_out = reflect_and_curate(trace, roles, ep, spec.task, attempts, used, spec.ground_truth, outcome,
                                             progress.totals, job_id,
                                             finish={"status": "succeeded" if passed else "failed", "success": passed})
            result.delta_id, result.version = learned_out["delta_id"], learned_out["version"]
            result.reflection, result.curation = learned_out["reflection"], learned_out["curation"]
        result.status = "succeeded" if passed else "failed"
        if not (spec.mode == "llm" and spec.learn):  # when learning, the apply step already finished the episode
            update_episode(ep.id, status=result.status, success=passed, finished_at=utcnow(), **progress.spent())
    return result


def _attempts(spec: TaskSpec, ep: Episode, trace: Trace, roles: Optional[Roles], sandbox: Any, settings: Settings,
              progress: Progress, job_id: Optional[str]) -> list[Attempt]:
    """Generate and run until the code passes or the attempts run out; sandbox-only runs the given code once."""
    attempts: list[Attempt] = []
    used: list[str] = []
    for n in range(1, ep.max_iterations + 1 if spec.mode == "llm" else 2):
        check_cancel(job_id)
        if spec.mode == "llm" and roles is not None:
            progress.step = "generate"
            query = spec.task if not attempts else f"{spec.task}\n{attempts[-1].feedback[:500]}"
            hits = retrieve(ep.playbook_id, query, spec.k if spec.k is not None else settings.default_k)
            text = render(None, [h.bullet for h in hits], settings.prompt_token_budget)
            with trace.step("generate", n) as p:
                out = roles.generator.generate(spec.task, spec.language, text, attempts, ep.id)
                p.update(GeneratePayload(
                    messages=out.messages, response=out.raw, code=out.value.code, reasoning=out.value.reasoning,
                    bullet_ids=out.value.bullet_ids,
                    retrieved=[RetrievedBullet(id=h.bullet.id, score=round(h.score, 4), scores=h.scores) for h in hits],
                    prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                    latency_ms=out.latency_ms, llm_mode=out.mode, call_ids=out.call_ids))
            progress.totals["tokens"] += out.prompt_tokens + out.completion_tokens
            progress.totals["llm_ms"] += out.latency_ms
            code = out.value.code
            used += [b for b in out.value.bullet_ids if b not in used]
        else:
            code = spec.code or ""
        check_cancel(job_id)
        progress.step = "execute"
        stream = OutputStream(trace, n)
        t0 = time.perf_counter()
        verdict = evaluate(sandbox, code, spec.language, tests=spec.tests, expected_output=spec.expected_output,
                           timeout=settings.sandbox_timeout, entry_point=spec.entry_point,
                           on_stdout=stream.callback("stdout"), on_stderr=stream.callback("stderr"))
        stream.close()
        progress.totals["sandbox_ms"] += (time.perf_counter() - t0) * 1000
        record_run(trace, n, code, spec.language, verdict, getattr(sandbox, "isolation", ""), progress.totals)
        attempts.append(Attempt(n, code, verdict.feedback, verdict.passed, list(used)))
        if verdict.passed:
            break
    return attempts
