"""The one ACE loop: route, generate, execute, evaluate, refine, reflect, curate.

The UI, the CLI, the benchmark runner and the HTTP service all come through
here (`run_episode`; `core.episodes.learning.learn` for trajectories produced
elsewhere). Every step is written to the trace as it happens (`core.episodes.trace`),
so a viewer in another process can follow a running episode.

A model reply that cannot be used costs an attempt (the Generator's) or the
learning (the Reflector's, the Curator's), never the episode: it keeps its real
verdict. Only a real crash (no model reachable, no sandbox, a bug) ends it with
an `error` event and status `error`; what was recorded stays.
"""

import time
from contextlib import ExitStack, closing
from typing import Any, Optional

from core.config import Settings, get_settings
from core.episodes.calls import (
    OUT_OF_TIME,
    call_role,
    claimed_fields,
    ids_in_prompt,
    out_of_time,
    result_fields,
    split_claimed,
    unusable_feedback,
)
from core.episodes.events import EventSink, GeneratePayload, RetrievedBullet, RoutePayload
from core.episodes.learning import reflect_and_curate, skip_learning
from core.episodes.outcome import Progress, recorded_ending
from core.episodes.review import run_review_episode
from core.episodes.spec import EpisodeResult, Roles, TaskSpec
from core.episodes.store import check_cancel, create_episode, learned_delta, load_episode, update_episode
from core.episodes.trace import OutputStream, Trace, record_run
from core.llm.deadline import episode_budget
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
    has just stored (`create_episode`, or with rows of its own), so it is not read back. Every model
    call inside is bounded by the episode's time budget (`settings.episode_budget`).
    """
    settings = settings or get_settings()
    with episode_budget(settings.episode_budget):
        if spec.workflow == "review" and spec.mode == "llm":
            return run_review_episode(spec, episode_id=episode_id or (episode.id if episode else None),
                                      roles=roles, sandbox=sandbox, job_id=job_id, settings=settings,
                                      on_event=on_event)
        return _run_single(spec, episode_id, roles, sandbox, job_id, settings, on_event, episode)


def _run_single(spec: TaskSpec, episode_id: Optional[str], roles: Optional[Roles], sandbox: Any,
                job_id: Optional[str], settings: Settings, on_event: Optional[EventSink],
                episode: Optional[Episode]) -> EpisodeResult:
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
        result.success, result.attempts = passed, len(attempts)
        result.code = next((a.code for a in reversed(attempts) if a.code), None)
        status = "succeeded" if passed else "failed"
        if spec.mode == "llm" and spec.learn and roles is not None:
            finish = {"status": status, "success": passed, "attempts": len(attempts)}
            skip = (OUT_OF_TIME if progress.out_of_time
                    else "no attempt produced code" if not any(a.code for a in attempts) else None)
            if skip is not None:
                learned_out = skip_learning(trace, ep, skip, progress.totals, finish)
            else:
                outcome = (f"succeeded on attempt {len(attempts)} of {ep.max_iterations}" if passed
                           else f"failed after {len(attempts)} attempts")
                progress.step = "reflect"
                used = next((a.bullet_ids for a in reversed(attempts) if a.code), [])
                learned_out = reflect_and_curate(trace, roles, ep, spec.task, attempts, used, spec.ground_truth,
                                                 outcome, progress.totals, job_id, finish=finish)
            result.delta_id, result.version = learned_out["delta_id"], learned_out["version"]
            result.reflection, result.curation = learned_out["reflection"], learned_out["curation"]
            result.learning_skipped = learned_out.get("reason")
        result.status = status
        if not (spec.mode == "llm" and spec.learn):  # when learning, the apply step already finished the episode
            update_episode(ep.id, status=result.status, success=passed, finished_at=utcnow(),
                           attempts=len(attempts), **progress.spent())
    return result


def _attempts(spec: TaskSpec, ep: Episode, trace: Trace, roles: Optional[Roles], sandbox: Any, settings: Settings,
              progress: Progress, job_id: Optional[str]) -> list[Attempt]:
    """Generate and run until the code passes or the attempts (or the episode's time) run out; sandbox-only
    runs the given code once. A reply that cannot be used is a failed attempt: nothing runs, and the next
    attempt's prompt says why."""
    attempts: list[Attempt] = []
    used: list[str] = []
    for n in range(1, ep.max_iterations + 1 if spec.mode == "llm" else 2):
        check_cancel(job_id)
        if spec.mode == "llm" and roles is not None:
            if out_of_time():
                progress.out_of_time = True
                break
            progress.step = "generate"
            code, why = _generate(spec, ep, trace, roles, settings, progress, attempts, used, n)
            progress.attempts = n
            if code is None:
                attempts.append(Attempt(n, "", why, False, list(used)))
                continue
        else:
            progress.attempts = n
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


def _generate(spec: TaskSpec, ep: Episode, trace: Trace, roles: Roles, settings: Settings, progress: Progress,
              attempts: list[Attempt], used: list[str], n: int) -> tuple[Optional[str], str]:
    """Attempt `n`'s code, or (None, why) when the Generator's reply could not be used: why is the
    feedback the next attempt's prompt gets. Only bullets that were in its prompt count as used."""
    query = spec.task if not attempts else f"{spec.task}\n{attempts[-1].feedback[:500]}"
    hits = retrieve(ep.playbook_id, query, spec.k if spec.k is not None else settings.default_k)
    text = render(None, [h.bullet for h in hits], settings.prompt_token_budget)
    retrieved = [RetrievedBullet(id=h.bullet.id, score=round(h.score, 4), scores=h.scores) for h in hits]
    ep_update: dict[str, Any] = {}
    code: Optional[str] = None
    why = ""
    with trace.step("generate", n, episode=ep_update) as p:
        p.update(GeneratePayload(retrieved=retrieved))
        out, failed = call_role(p, progress.totals,
                                lambda: roles.generator.generate(spec.task, spec.language, text, attempts, ep.id))
        if out is None:
            why = unusable_feedback(str(failed))
        else:
            allowed = ids_in_prompt([h.bullet.id for h in hits], text, messages=out.messages)
            kept, invented = split_claimed(out.value.bullet_ids, allowed)
            p.update(GeneratePayload(code=out.value.code, reasoning=out.value.reasoning, bullet_ids=kept,
                                     retrieved=retrieved, **result_fields(out), **claimed_fields(invented)))
            if out.value.code.strip():
                code = out.value.code
                used += [b for b in kept if b not in used]
            else:
                p.update(GeneratePayload(error="the reply held no code", error_type="NoCode"))
                why = unusable_feedback("the reply held no code")
        # the episode row counts the attempt and its tokens now, so a live view shows them before the run ends
        ep_update.update(attempts=n, **progress.spent())
    return code, why
