"""The learning half of an episode, and learning from runs that happened elsewhere.

Reflection on real feedback, then a delta from the Curator, applied at once or left
for review. `learn` is the same half for a trajectory an agent posts to the service.
"""

import re
from typing import Any, Optional

from core.config import get_settings
from core.episodes.events import ApplyPayload, ApplyStatus, CuratePayload, ErrorPayload, ReflectPayload, RoutePayload
from core.episodes.spec import Roles
from core.episodes.store import check_cancel, learned_delta, load_episode, update_episode
from core.episodes.trace import StepError, Trace, step_name
from core.playbook import OpIn, bullet_line, ensure_playbook, get_bullet, render, retrieve, submit_delta
from core.playbook.lines import marked_bullet_ids
from core.retrieval import similar_pairs
from core.roles import Attempt
from core.storage.db import read_session, write_session
from core.storage.models import Episode, Reflection, utcnow


def _used_bullets_text(playbook_id: str, ids: list[str]) -> str:
    lines = []
    with read_session() as s:
        for bid in dict.fromkeys(ids):
            b = get_bullet(playbook_id, bid, s)
            if b is not None:
                lines.append(bullet_line(b))
    return "\n".join(lines)



def reflect_and_curate(trace: Trace, roles: Roles, ep: Episode, task: str, attempts: list[Attempt],
                       used: list[str], ground_truth: Optional[str], outcome: str, totals: dict[str, float],
                       job_id: Optional[str] = None, reflector_instructions: str = "",
                       curator_instructions: str = "", finish: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The learning half: reflection on real feedback, then a delta (applied or pending).

    `finish`: episode fields to set with the apply event (the episode's final state), saving a write.
    """
    rows: list[Any] = []
    with step_name("reflect"), trace.step("reflect", rows=rows) as p:
        refl = roles.reflector.reflect(task, attempts, _used_bullets_text(ep.playbook_id, used), ground_truth, ep.id,
                                       reflector_instructions)
        p.update(ReflectPayload(messages=refl.messages, response=refl.raw, reflection=refl.value.model_dump(),
                                prompt_tokens=refl.prompt_tokens, completion_tokens=refl.completion_tokens,
                                latency_ms=refl.latency_ms, call_ids=refl.call_ids))
        r = refl.value
        rows.append(Reflection(episode_id=ep.id, playbook_id=ep.playbook_id, reasoning=r.reasoning,
                               error_identification=r.error_identification,
                               root_cause_analysis=r.root_cause_analysis, correct_approach=r.correct_approach,
                               key_insight=r.key_insight, bullet_tags=[t.model_dump() for t in r.bullet_tags]))
    totals["tokens"] += refl.prompt_tokens + refl.completion_tokens
    totals["llm_ms"] += refl.latency_ms
    check_cancel(job_id)
    shown = [h.bullet for h in retrieve(ep.playbook_id, f"{task}\n{r.key_insight}", 50)]
    pb_text = render(None, shown) + _merge_hints(ep.playbook_id, [b.id for b in shown])
    with step_name("curate"), trace.step("curate") as p:
        cur = roles.curator.curate(task, r, pb_text, outcome, ep.id, curator_instructions)
        p.update(CuratePayload(messages=cur.messages, response=cur.raw, curation=cur.value.model_dump(),
                               prompt_tokens=cur.prompt_tokens, completion_tokens=cur.completion_tokens,
                               latency_ms=cur.latency_ms, call_ids=cur.call_ids))
    totals["tokens"] += cur.prompt_tokens + cur.completion_tokens
    totals["llm_ms"] += cur.latency_ms
    check_cancel(job_id)
    tag_ops = [OpIn(type="TAG", bullet_id=t.id, tag=t.tag, justification=f"reflector: {outcome}")
               for t in r.bullet_tags]
    ops = tag_ops + list(cur.value.operations)
    # Stored (and in auto mode applied) in one transaction; the apply event then points the episode at
    # its delta, which a retried job checks so it never learns twice.
    auto = ep.review_mode == "auto"
    ep_update: dict[str, Any] = {}
    with step_name("apply"), trace.step("apply", episode=ep_update) as p:
        delta_id, applied = submit_delta(ep.playbook_id, ops, cur.value.reasoning, episode_id=ep.id,
                                         source="curator", auto=auto)
        ep_update["delta_id"] = delta_id
        if finish is not None:
            ep_update.update(finish, finished_at=utcnow(), tokens=totals["tokens"], llm_ms=totals["llm_ms"],
                             sandbox_ms=totals["sandbox_ms"])
        status: ApplyStatus = "empty" if not ops else ("applied" if applied is not None else "pending")
        version = applied.version if applied is not None else None
        p.update(ApplyPayload(delta_id=delta_id, review_mode=ep.review_mode, operations=len(ops), status=status,
                              version=version))
        if applied is not None:
            p.update(ApplyPayload(results=[vars(x) for x in applied.results],
                                  rejected=[{"op": i, "error": e} for i, e in applied.rejected]))
    return {"episode_id": ep.id, "reflection": r.model_dump(), "curation": cur.value.model_dump(),
            "delta_id": delta_id, "version": version, "status": status}


def _merge_hints(playbook_id: str, ids: list[str]) -> str:
    """Near-duplicate pairs among the bullets the Curator sees, so it can MERGE them."""
    try:
        pairs = similar_pairs(playbook_id, among=ids, limit=5)
    except Exception:  # hints are optional; an embedder hiccup must not stop learning
        return ""
    if not pairs:
        return ""
    return "\n\nNear-duplicate bullets (consider MERGE): " + "; ".join(
        f"[{a}] ~ [{b}] (similarity {v:.2f})" for a, b, v in pairs)


def learn(playbook_id: str, user_message: str, trajectory: str, ground_truth: Optional[str] = None,
          evaluation: Optional[str] = None, reflector_instructions: str = "", curator_instructions: str = "",
          job_id: Optional[str] = None, roles: Optional[Roles] = None,
          episode_id: Optional[str] = None) -> dict[str, Any]:
    """Learn from a run that happened elsewhere (the service's episodes/learn)."""
    settings = get_settings()
    ep = load_episode(episode_id) if episode_id else create_learn_episode(playbook_id, user_message, ground_truth,
                                                                           job_id)
    if learned_delta(ep):  # a retried job whose first run already learned: do not learn twice
        return {"episode_id": ep.id, "reflection": None, "curation": None, "delta_id": learned_delta(ep),
                "version": None, "status": "already learned"}
    update_episode(ep.id, status="running", started_at=utcnow(), error=None)
    roles = roles or Roles.from_settings(settings)
    trace = Trace(ep.id)
    used = marked_bullet_ids(user_message, trajectory)
    feedback = f"Trajectory:\n{trajectory}" + (f"\n\nEvaluation:\n{evaluation}" if evaluation else "")
    passed = _looks_passed(evaluation)
    attempt = Attempt(1, trajectory, feedback, bool(passed), used)
    trace.emit("route", RoutePayload(playbook_id=ep.playbook_id, reason=ep.routing_reason, used_bullets=used))
    totals: dict[str, float] = {"tokens": 0, "llm_ms": 0.0, "sandbox_ms": 0.0}
    outcome = evaluation or "no evaluation given"
    try:
        out = reflect_and_curate(trace, roles, ep, user_message, [attempt], used, ground_truth, outcome[:500],
                                 totals, job_id, reflector_instructions, curator_instructions)
    except Exception as exc:
        step, cause = (exc.step, exc.cause) if isinstance(exc, StepError) else ("learn", exc)
        message = f"{step} failed: {cause}"
        trace.emit("error", ErrorPayload(step=step, message=message, type=type(cause).__name__))
        update_episode(ep.id, status="error", error=message, finished_at=utcnow())
        raise cause from None
    update_episode(ep.id, status="failed" if passed is False else "succeeded",
                    success=passed, attempts=1, finished_at=utcnow(), tokens=totals["tokens"],
                    llm_ms=totals["llm_ms"])
    return out


def create_learn_episode(playbook_id: str, user_message: str, ground_truth: Optional[str] = None,
                         job_id: Optional[str] = None) -> Episode:
    """The episode a learn request shows up as in the trace and reflection pages."""
    settings = get_settings()
    with write_session() as s:
        pb = ensure_playbook(s, playbook_id)
        ep = Episode(playbook_id=pb.id, task=user_message or "(no user message)", mode="learn",
                     ground_truth=ground_truth, review_mode=pb.review_mode or settings.review_mode,
                     routing_reason="submitted by an agent over the ACE service", model=settings.model,
                     job_id=job_id)
        s.add(ep)
        s.flush()
        return ep


def _looks_passed(evaluation: Optional[str]) -> Optional[bool]:
    if not evaluation:
        return None
    e = evaluation.lower()
    if re.search(r"\b(fail(ed|ure)?|error|incorrect|wrong)\b", e):
        return False
    if re.search(r"\b(pass(ed)?|success(ful)?|correct)\b", e):
        return True
    return None
