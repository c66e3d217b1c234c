"""The learning half of an episode, and learning from runs that happened elsewhere.

Reflection on real feedback, then a delta from the Curator, applied at once or left
for review. `learn` is the same half for a trajectory an agent posts to the service.
"""

import re
from typing import Any, Optional

from core.config import get_settings
from core.episodes.calls import (
    OUT_OF_TIME,
    call_role,
    claimed_fields,
    clip_id,
    ids_in_prompt,
    out_of_time,
    result_fields,
)
from core.episodes.events import (
    ApplyPayload,
    ApplyStatus,
    CuratePayload,
    DroppedOp,
    ErrorPayload,
    ReflectPayload,
    RoutePayload,
)
from core.episodes.outcome import stored_totals, zero_totals
from core.episodes.spec import Roles
from core.episodes.store import check_cancel, learned_delta, load_episode, update_episode
from core.episodes.trace import StepError, Trace, step_name
from core.interrupts import Interrupted
from core.jobs import TAKEN_OVER
from core.playbook import OpIn, bullet_line, ensure_playbook, get_bullet, render, retrieve, submit_delta
from core.playbook.lines import marked_bullet_ids
from core.retrieval import similar_pairs
from core.roles import Attempt, BulletTag, ReflectorOutput
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



def skip_learning(trace: Trace, ep: Any, reason: str, totals: dict[str, float],
                  finish: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Learning did not happen: an `apply` event with status "skipped" and why (with the episode's final
    state when `finish` is given), so the trace says "learning skipped: <reason>"."""
    ep_update = _finished(finish, totals)
    trace.emit("apply", ApplyPayload(delta_id=None, review_mode=ep.review_mode, operations=0, status="skipped",
                                     reason=reason, version=None), episode=ep_update or None)
    return {"episode_id": ep.id, "reflection": None, "curation": None, "delta_id": None, "version": None,
            "status": "skipped", "reason": reason, "dropped": []}


def _finished(finish: Optional[dict[str, Any]], totals: dict[str, float]) -> dict[str, Any]:
    if finish is None:
        return {}
    return {**finish, "finished_at": utcnow(), **stored_totals(totals)}


def reflect_and_curate(trace: Trace, roles: Roles, ep: Episode, task: str, attempts: list[Attempt],
                       used: list[str], ground_truth: Optional[str], outcome: str, totals: dict[str, float],
                       job_id: Optional[str] = None, reflector_instructions: str = "",
                       curator_instructions: str = "", finish: Optional[dict[str, Any]] = None,
                       skip_unusable: bool = True) -> dict[str, Any]:
    """The learning half: reflection on real feedback, then a delta (applied or pending).

    `finish`: episode fields to set with the apply event (the episode's final state), saving a write.
    `skip_unusable`: when the Reflector or the Curator gives no usable reply (an `LLMError`), learning is
    skipped (the `apply` event says why) and the episode keeps its verdict; False (learning from an
    agent's trajectory, where learning is the whole job) raises it as a `StepError` instead, once the
    failed call is in the trace. Bullet ids a role names that were not in its prompt are dropped.
    """
    if skip_unusable and out_of_time():
        return skip_learning(trace, ep, OUT_OF_TIME, totals, finish)
    rows: list[Any] = []
    used_text = _used_bullets_text(ep.playbook_id, used)
    with step_name("reflect"), trace.step("reflect", rows=rows) as p:
        refl, failed = call_role(p, totals, lambda: roles.reflector.reflect(
            task, attempts, used_text, ground_truth, ep.id, reflector_instructions), unavailable_ends=False)
        if refl is not None:
            r, invented = _honest_tags(refl.value, ids_in_prompt(used, used_text, messages=refl.messages))
            p.update(ReflectPayload(reflection=r.model_dump(), **result_fields(refl), **claimed_fields(invented)))
            rows.append(Reflection(episode_id=ep.id, playbook_id=ep.playbook_id, reasoning=r.reasoning,
                                   error_identification=r.error_identification,
                                   root_cause_analysis=r.root_cause_analysis, correct_approach=r.correct_approach,
                                   key_insight=r.key_insight, bullet_tags=[t.model_dump() for t in r.bullet_tags]))
    if failed is not None:
        if not skip_unusable:
            raise StepError("reflect", failed)
        return skip_learning(trace, ep, f"the Reflector's reply could not be used: {failed}", totals, finish)
    check_cancel(job_id)
    if skip_unusable and out_of_time():
        return skip_learning(trace, ep, OUT_OF_TIME, totals, finish)
    shown = [h.bullet for h in retrieve(ep.playbook_id, f"{task}\n{r.key_insight}", 50)]
    pb_text = render(None, shown) + _merge_hints(ep.playbook_id, [b.id for b in shown])
    with step_name("curate"), trace.step("curate") as p:
        cur, failed = call_role(p, totals, lambda: roles.curator.curate(
            task, r, pb_text, outcome, ep.id, curator_instructions), unavailable_ends=False)
        if cur is not None:
            in_prompt = ids_in_prompt([b.id for b in shown], pb_text, messages=cur.messages)
            tag_ops, cur_ops, dropped = judge_ops(r.bullet_tags, list(cur.value.operations), in_prompt, outcome,
                                                  getattr(cur.value, "dropped", None) or [])
            curation = {**cur.value.model_dump(exclude={"dropped"}),
                        "operations": [op.model_dump() for op in cur_ops]}
            p.update(CuratePayload(curation=curation, dropped=dropped, **result_fields(cur)))
    if failed is not None:
        if not skip_unusable:
            raise StepError("curate", failed)
        return skip_learning(trace, ep, f"the Curator's reply could not be used: {failed}", totals, finish)
    assert cur is not None  # call_role gives a reply or an error
    check_cancel(job_id)
    ops = tag_ops + cur_ops
    # Stored (and in auto mode applied) in one transaction; the apply event then points the episode at
    # its delta, which a retried job checks so it never learns twice.
    auto = ep.review_mode == "auto"
    ep_update: dict[str, Any] = {}
    with step_name("apply"), trace.step("apply", episode=ep_update) as p:
        delta_id, applied = submit_delta(ep.playbook_id, ops, cur.value.reasoning, episode_id=ep.id,
                                         source="curator", auto=auto, dropped=dropped or None)
        ep_update["delta_id"] = delta_id
        ep_update.update(_finished(finish, totals))
        status: ApplyStatus = "empty" if not ops else ("applied" if applied is not None else "pending")
        version = applied.version if applied is not None else None
        p.update(ApplyPayload(delta_id=delta_id, review_mode=ep.review_mode, operations=len(ops),
                              dropped=len(dropped), status=status, version=version))
        if applied is not None:
            p.update(ApplyPayload(results=[vars(x) for x in applied.results],
                                  rejected=[{"op": i, "error": e} for i, e in applied.rejected]))
    return {"episode_id": ep.id, "reflection": r.model_dump(), "curation": curation, "delta_id": delta_id,
            "version": version, "status": status, "dropped": dropped}


def _honest_tags(r: ReflectorOutput, allowed: set[str]) -> tuple[ReflectorOutput, list[str]]:
    """The reflection with only tags on bullets that were among those used (and in its prompt)."""
    kept = [t for t in r.bullet_tags if t.id in allowed]
    invented = [t.id for t in r.bullet_tags if t.id not in allowed]
    return (r.model_copy(update={"bullet_tags": kept}) if invented else r), invented


def judge_ops(tags: list[BulletTag], ops: list[OpIn], in_prompt: set[str], outcome: str,
              parse_dropped: list[Any]) -> tuple[list[OpIn], list[OpIn], list[DroppedOp]]:
    """(the Reflector's TAG ops, the Curator's ops kept, every op dropped and why).

    One TAG per bullet per episode, the Reflector's first; a Curator op naming a bullet that was not in
    its prompt is dropped, as are the ops its reply held that did not validate (`parse_dropped`, from the
    role's parsing). The kept ops still apply (auto) or wait for review (manual).
    """
    dropped: list[DroppedOp] = [DroppedOp(op=d.get("op"), reason=str(d.get("reason", "")))
                                if isinstance(d, dict) else DroppedOp(op=d, reason="invalid operation")
                                for d in parse_dropped]
    tagged: dict[str, str] = {}
    tag_ops: list[OpIn] = []
    for t in tags:
        op = OpIn(type="TAG", bullet_id=t.id, tag=t.tag, justification=f"reflector: {outcome}")
        if t.id in tagged:
            dropped.append(DroppedOp(op=op.model_dump(), reason=f"bullet {t.id} was already tagged by the reflector"))
            continue
        tagged[t.id] = "the reflector"
        tag_ops.append(op)
    kept: list[OpIn] = []
    for op in ops:
        named = ([op.bullet_id] if op.bullet_id else []) + list(op.bullet_ids) if op.type != "ADD" else []
        missing = next((i for i in named if i not in in_prompt), None)
        if missing is not None:
            dropped.append(DroppedOp(op=op.model_dump(), reason=f"bullet {clip_id(missing)} was not in the "
                                                                 "curator's prompt"))
            continue
        if op.type == "TAG" and op.bullet_id is not None:
            if op.bullet_id in tagged:
                dropped.append(DroppedOp(op=op.model_dump(), reason=f"bullet {op.bullet_id} was already tagged "
                                                                     f"by {tagged[op.bullet_id]} in this episode"))
                continue
            tagged[op.bullet_id] = "the curator"
        kept.append(op)
    return tag_ops, kept, dropped


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
    totals = zero_totals()
    outcome = evaluation or "no evaluation given"
    try:  # learning is the whole job here: an unusable reply fails it, so the job's retry can run it again
        out = reflect_and_curate(trace, roles, ep, user_message, [attempt], used, ground_truth, outcome[:500],
                                 totals, job_id, reflector_instructions, curator_instructions, skip_unusable=False)
    except Interrupted as exc:  # cancelled (a BaseException, so not a failure below)
        if exc.reason != TAKEN_OVER:  # another worker runs this request now: its record is theirs to write
            trace.emit("error", ErrorPayload(step="learn", message="cancelled by request"))
            update_episode(ep.id, status="cancelled", error="cancelled by request", finished_at=utcnow(),
                           **stored_totals(totals))
        raise
    except Exception as exc:
        step, cause = (exc.step, exc.cause) if isinstance(exc, StepError) else ("learn", exc)
        message = f"{step} failed: {cause}"
        trace.emit("error", ErrorPayload(step=step, message=message, type=type(cause).__name__))
        update_episode(ep.id, status="error", error=message, finished_at=utcnow(), **stored_totals(totals))
        raise cause from None
    update_episode(ep.id, status="failed" if passed is False else "succeeded",
                   success=passed, attempts=1, finished_at=utcnow(), **stored_totals(totals))
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


_FAIL = r"fail(?:s|ed|ing|ures?)?|\w*errors?|incorrect|wrong"
_PASS = r"pass(?:es|ed|ing)?|succe(?:ss(?:ful)?|eded|eds)|correct|ok"
_NUM = r"\d+|no|zero|none"
# "3/5 tests passed", "5 of 5 passed", "2 out of 4 failed": (done, total, word)
_RATIO_BEFORE = re.compile(rf"\b(\d+)\s*(?:/|of|out of)\s*(\d+)\s+(?:[a-z]+\s+)?({_PASS}|{_FAIL})\b")
# "PASSED 1/1", "failed 0/3" (a verdict, then passed/total)
_RATIO_AFTER = re.compile(rf"\b({_PASS}|{_FAIL})\s*:?\s*(\d+)\s*/\s*(\d+)\b")
# "12 passed", "all 12 tests passed", "0 failed", "no failures", "zero errors"
_COUNT_BEFORE = re.compile(rf"\b({_NUM})\s+(?:[a-z]+\s+)?({_PASS}|{_FAIL})\b")
# "failed: 0", "errors=0", "passed: 12"
_COUNT_AFTER = re.compile(rf"\b({_PASS}|{_FAIL})\s*[:=]\s*(\d+)\b")
# "did not fail", "without errors", "never failed", "error-free"
_NO_FAIL = re.compile(rf"(?:\bnot|n't|\bnever|\bwithout)\s+(?:[a-z]+\s+)?(?:{_FAIL})\b|\berror[- ]free\b")
# "did not pass", "isn't correct", "never succeeded"
_NO_PASS = re.compile(rf"(?:\bnot|n't|\bnever)\s+(?:[a-z]+\s+)?(?:{_PASS})\b")


def _count(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _looks_passed(evaluation: Optional[str]) -> Optional[bool]:
    """Whether an agent's free-text evaluation says its run passed: True, False, or None (cannot tell).

    Counts are read as counts: "all 12 tests passed, 0 failed", "failed: 0" and "no failures" pass,
    "3/5 passed" and "1 error" fail; any failure that is not counted as zero or negated fails.
    """
    if not evaluation:
        return None
    e = evaluation.lower()
    failed = passed = clean = nothing_passed = False

    def is_fail(word: str) -> bool:
        return re.fullmatch(_FAIL, word) is not None

    for m in _RATIO_BEFORE.finditer(e):
        done, total, word = int(m[1]), int(m[2]), m[3]
        if is_fail(word):
            failed, clean = failed or done > 0, clean or done == 0
        elif total:
            failed, passed = failed or done < total, passed or done == total
    for m in _RATIO_AFTER.finditer(e):
        word, done, total = m[1], int(m[2]), int(m[3])
        failed = failed or is_fail(word) or done < total
        passed = passed or (not is_fail(word) and 0 < done == total)
    e = _RATIO_AFTER.sub(" ", _RATIO_BEFORE.sub(" ", e))
    for m in [*_COUNT_BEFORE.finditer(e), *_COUNT_AFTER.finditer(e)]:
        number, word = (m[1], m[2]) if m.re is _COUNT_BEFORE else (m[2], m[1])
        n = _count(number)
        if is_fail(word):
            failed, clean = failed or n > 0, clean or n == 0
        else:
            passed, nothing_passed = passed or n > 0, nothing_passed or n == 0
    e = _COUNT_AFTER.sub(" ", _COUNT_BEFORE.sub(" ", e))
    if _NO_PASS.search(e):
        failed = True
    e = _NO_PASS.sub(" ", e)
    if _NO_FAIL.search(e):
        clean = True
    e = _NO_FAIL.sub(" ", e)
    failed = failed or re.search(rf"\b(?:{_FAIL})\b", e) is not None
    passed = passed or re.search(rf"\b(?:{_PASS})\b", e) is not None
    if failed:
        return False
    if passed or (clean and not nothing_passed):
        return True
    return None
    e = evaluation.lower()
    if re.search(r"\b(fail(ed|ure)?|error|incorrect|wrong)\b", e):
        return False
    if re.search(r"\b(pass(ed)?|success(ful)?|correct)\b", e):
        return True
    return None
