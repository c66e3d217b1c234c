"""The review workflow: generator, reviewer and optimizer, each with its own playbook.

A generator writes code and it runs; a reviewer reads the code and what really
happened and says whether it needs optimizing; an optimizer rewrites it and
the rewrite runs and is judged again. Every step lands in the same trace as
the single-role loop (`generate`, `execute`, `evaluate`, `review`, `optimize`,
then `reflect`/`curate`/`apply` once per role, each payload naming its
`role`). Each role learns into its own playbook (`<pid>`, `<pid>-reviewer`,
`<pid>-optimizer`) through the same propose/auto-apply path, so every role's
deltas can be curated in the diff viewer.

A Generator's or Optimizer's reply that cannot be used is a failed attempt (asked
again, with why); a Reviewer's is a review that decided nothing (failing code is
optimized anyway). A role whose learning cannot happen says why in its `apply`
event ("skipped"); the episode keeps its verdict.

Reached through `core.episodes.loop.run_episode` with `TaskSpec(workflow="review")`.
"""

import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from types import SimpleNamespace
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
from core.episodes.events import EventKind, EventSink, GeneratePayload, RetrievedBullet, ReviewPayload, RoutePayload
from core.episodes.learning import reflect_and_curate, skip_learning
from core.episodes.outcome import Progress, recorded_ending
from core.episodes.spec import EpisodeResult, Roles, TaskSpec
from core.episodes.store import check_cancel, create_episode, learned_delta, load_episode, update_episode
from core.episodes.trace import OutputStream, Trace, record_run
from core.llm.client import LLMClient, LLMResult
from core.playbook import ensure_playbook, render, retrieve
from core.roles import (
    Attempt,
    LLMCurator,
    LLMGenerator,
    LLMOptimizer,
    LLMReflector,
    LLMReviewer,
    Optimizer,
    Reviewer,
    ReviewerOutput,
    clip,
)
from core.sandbox import get_sandbox
from core.sandbox.evaluate import Verdict, evaluate
from core.storage.db import write_session
from core.storage.models import Episode, utcnow

ROLE_SUFFIX = {"generator": "", "reviewer": "-reviewer", "optimizer": "-optimizer"}

REFLECT_FOR = {
    "generator": "You are reflecting on the GENERATOR: the first version of the code. Extract a lesson that helps "
                 "a generator write code that passes the first time.",
    "reviewer": "You are reflecting on the REVIEWER: each attempt shows the code it reviewed, the real execution, "
                "its decision (optimize or not) and what happened after. Judge whether the decision was right "
                "and extract a lesson that helps a reviewer decide and point at the real problem.",
    "optimizer": "You are reflecting on the OPTIMIZER: each attempt is one of its rewrites with the real "
                 "execution of that rewrite. Extract a lesson that helps an optimizer rewrite code correctly.",
}


@dataclass
class ReviewRoles(Roles):
    """The three-role loop's roles; missing reviewer/optimizer come from settings."""

    reviewer: Optional[Reviewer] = None
    optimizer: Optional[Optimizer] = None

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> "ReviewRoles":
        llm = LLMClient(settings)
        return cls(LLMGenerator(llm), LLMReflector(llm), LLMCurator(llm), LLMReviewer(llm), LLMOptimizer(llm))


def role_playbooks(playbook_id: str) -> dict[str, str]:
    """Playbook id per role: the generator keeps the episode's own."""
    out = {role: f"{playbook_id}{suffix}" for role, suffix in ROLE_SUFFIX.items()}
    if len(out["optimizer"]) > 64:
        raise ValueError(f"playbook id {playbook_id!r} is too long for the review workflow (at most 54 characters)")
    return out


def _complete_roles(roles: Optional[Roles], settings: Settings) -> ReviewRoles:
    if isinstance(roles, ReviewRoles) and roles.reviewer is not None and roles.optimizer is not None:
        return roles
    full = ReviewRoles.from_settings(settings)
    if roles is None:
        return full
    return ReviewRoles(roles.generator, roles.reflector, roles.curator,
                       getattr(roles, "reviewer", None) or full.reviewer,
                       getattr(roles, "optimizer", None) or full.optimizer)


def _retrieved(hits: list[Any]) -> list[RetrievedBullet]:
    return [RetrievedBullet(id=h.bullet.id, score=round(h.score, 4)) for h in hits]


NO_CODE = "no attempt produced code"


class _Run:
    """One review episode's state: what ran, what each role used, the totals.

    Every attempt is numbered (`runs`): a run of code, or a Generator's or Optimizer's reply that could
    not be used (nothing ran; the attempt failed with why)."""

    def __init__(self, spec: TaskSpec, ep: Episode, trace: Trace, roles: ReviewRoles, sandbox: Any,
                 settings: Settings, job_id: Optional[str], progress: Progress):
        self.spec, self.ep, self.trace, self.roles, self.sandbox = spec, ep, trace, roles, sandbox
        self.settings, self.job_id, self.progress = settings, job_id, progress
        self.pbs = role_playbooks(ep.playbook_id)
        self.totals = progress.totals
        self.used: dict[str, list[str]] = {r: [] for r in ROLE_SUFFIX}
        self.runs = 0
        self.usable_reviews = 0

    def out_of_time(self) -> bool:
        if out_of_time():
            self.progress.out_of_time = True
        return self.progress.out_of_time

    def playbook_text(self, role: str, query: str) -> tuple[str, list[Any]]:
        k = self.spec.k if self.spec.k is not None else self.settings.default_k
        hits = retrieve(self.pbs[role], query, k)
        return render(None, [h.bullet for h in hits], self.settings.prompt_token_budget), hits

    def execute(self, code: str, role: str, n: int) -> Verdict:
        check_cancel(self.job_id)
        self.progress.step = "execute"
        spec, trace = self.spec, self.trace.as_role(role)
        stream = OutputStream(trace, n)
        t0 = time.perf_counter()
        verdict = evaluate(self.sandbox, code, spec.language, tests=spec.tests, expected_output=spec.expected_output,
                           timeout=self.settings.sandbox_timeout, entry_point=spec.entry_point,
                           on_stdout=stream.callback("stdout"), on_stderr=stream.callback("stderr"))
        stream.close()
        self.totals["sandbox_ms"] += (time.perf_counter() - t0) * 1000
        record_run(trace, n, code, spec.language, verdict, getattr(self.sandbox, "isolation", ""), self.totals)
        return verdict

    def write_code(self, role: str, kind: EventKind, text: str, hits: list[Any],
                   call: Callable[[], LLMResult[Any]]) -> tuple[Optional[str], str]:
        """One attempt's code from the Generator or the Optimizer, or (None, why its reply was unusable)."""
        n = self.runs + 1
        ep_update: dict[str, Any] = {}
        code: Optional[str] = None
        why = ""
        with self.trace.as_role(role).step(kind, n, episode=ep_update) as p:
            p.update(GeneratePayload(retrieved=_retrieved(hits)))
            out, failed = call_role(p, self.totals, call)
            if out is None:
                why = unusable_feedback(str(failed))
            else:
                allowed = ids_in_prompt([h.bullet.id for h in hits], text, messages=out.messages)
                kept, invented = split_claimed(out.value.bullet_ids, allowed)
                p.update(GeneratePayload(code=out.value.code, reasoning=out.value.reasoning, bullet_ids=kept,
                                         retrieved=_retrieved(hits), **result_fields(out),
                                         **claimed_fields(invented)))
                if out.value.code.strip():
                    code = out.value.code
                    self.used[role] += [b for b in kept if b not in self.used[role]]
                else:
                    p.update(GeneratePayload(error="the reply held no code", error_type="NoCode"))
                    why = unusable_feedback("the reply held no code")
            if code is None:  # no run will record this attempt: the episode row counts it here
                ep_update.update(attempts=n, **self.progress.spent())
        self.runs = self.progress.attempts = n
        return code, why

    def generate(self, previous: list[Attempt]) -> tuple[Optional[str], Optional[Verdict], str]:
        """The generator's version and its run, or (None, None, why) when its reply could not be used."""
        check_cancel(self.job_id)
        self.progress.step = "generate"
        query = self.spec.task if not previous else f"{self.spec.task}\n{previous[-1].feedback[:500]}"
        text, hits = self.playbook_text("generator", query)
        code, why = self.write_code("generator", "generate", text, hits, lambda: self.roles.generator.generate(
            self.spec.task, self.spec.language, text, previous, self.ep.id))
        if code is None:
            return None, None, why
        return code, self.execute(code, "generator", self.runs), ""

    def review(self, code: str, verdict: Verdict) -> tuple[ReviewerOutput, bool, str]:
        """(the review, whether to optimize, why the reviewer's reply was unusable or ""). Failing code is
        optimized whatever the reviewer says (or when it said nothing usable)."""
        check_cancel(self.job_id)
        self.progress.step = "review"
        text, hits = self.playbook_text("reviewer", f"{self.spec.task}\n{verdict.feedback[:500]}")
        why = ""
        with self.trace.as_role("reviewer").step("review", self.runs) as p:
            reviewer: Reviewer = self.roles.reviewer  # type: ignore[assignment]
            p.update(ReviewPayload(forced=not verdict.passed, passed=verdict.passed, retrieved=_retrieved(hits)))
            out, failed = call_role(p, self.totals, lambda: reviewer.review(
                self.spec.task, self.spec.language, code, verdict.feedback, text, self.ep.id))
            if out is None:
                r, why = ReviewerOutput(), str(failed)
            else:
                r = out.value
                allowed = ids_in_prompt([h.bullet.id for h in hits], text, messages=out.messages)
                kept, invented = split_claimed(r.bullet_ids, allowed)
                p.update(ReviewPayload(needs_optimization=r.needs_optimization,
                                       forced=not verdict.passed and not r.needs_optimization, issues=r.issues,
                                       suggestions=r.suggestions, reasoning=r.reasoning, bullet_ids=kept,
                                       passed=verdict.passed, retrieved=_retrieved(hits), **result_fields(out),
                                       **claimed_fields(invented)))
                self.used["reviewer"] += [b for b in kept if b not in self.used["reviewer"]]
                self.usable_reviews += 1
        return r, r.needs_optimization or not verdict.passed, why

    def optimize(self, code: str, verdict: Verdict, review: ReviewerOutput,
                 retry_why: str = "") -> tuple[Optional[str], Optional[Verdict], str]:
        """The optimizer's rewrite and its run, or (None, None, why) when its reply could not be used.
        `retry_why`: why its previous reply for this review was unusable, added to the feedback."""
        check_cancel(self.job_id)
        self.progress.step = "optimize"
        query = f"{self.spec.task}\n{' '.join(review.issues)[:500]}"
        text, hits = self.playbook_text("optimizer", query)
        feedback = verdict.feedback + (f"\n\n{retry_why}" if retry_why else "")
        optimizer: Optimizer = self.roles.optimizer  # type: ignore[assignment]
        new_code, why = self.write_code("optimizer", "optimize", text, hits, lambda: optimizer.optimize(
            self.spec.task, self.spec.language, code, feedback, review, text, self.ep.id))
        if new_code is None:
            return None, None, why
        return new_code, self.execute(new_code, "optimizer", self.runs), ""

    def learn(self, role: str, attempts: list[Attempt], outcome: str, skip: Optional[str] = None) -> dict[str, Any]:
        self.progress.step = "reflect"
        # the learning half reads only these three fields; the episode row stays the generator's
        role_ep = SimpleNamespace(id=self.ep.id, playbook_id=self.pbs[role], review_mode=self.ep.review_mode)
        trace = self.trace.as_role(role)
        if skip is not None:
            return skip_learning(trace, role_ep, skip, self.totals)
        return reflect_and_curate(trace, self.roles, role_ep, self.spec.task, attempts,  # type: ignore[arg-type]
                                  self.used[role], self.spec.ground_truth, outcome, self.totals, self.job_id,
                                  reflector_instructions=REFLECT_FOR[role])


def _review_feedback(verdict: Verdict, review: ReviewerOutput, optimize: bool, after: Optional[Verdict],
                     review_why: str = "", rewrite_why: str = "") -> str:
    issues = "; ".join(review.issues) or "none"
    if not optimize:
        then = "no rewrite was asked for"
    elif after is None:
        then = f"the optimizer's rewrite could not be used: {rewrite_why[:600]}"
    else:
        then = f"the optimizer's rewrite {'PASSED' if after.passed else 'FAILED'}: {after.feedback[:600]}"
    decision = (f"none usable (its reply could not be used: {review_why[:300]})" if review_why else
                f"needs_optimization={review.needs_optimization}; issues: {issues}; suggestions: "
                f"{review.suggestions or 'none'}")
    return (f"Execution of the reviewed code:\n{clip(verdict.feedback, 1500)}\n\nReviewer decision: {decision}"
            f"\n\nWhat followed: {then}")


def run_review_episode(spec: TaskSpec, *, episode_id: Optional[str] = None, roles: Optional[Roles] = None,
                       sandbox: Any = None, job_id: Optional[str] = None, settings: Optional[Settings] = None,
                       on_event: Optional[EventSink] = None) -> EpisodeResult:
    """Generate, run, review, optimize and rerun, then let each role learn; never raises for the task's faults."""
    settings = settings or get_settings()
    ep = load_episode(episode_id) if episode_id else create_episode(spec, settings, job_id)
    learned = learned_delta(ep)
    if learned:  # a retried job whose first run already learned: do not learn twice
        return EpisodeResult(ep.id, ep.status, ep.success, ep.attempts, ep.playbook_id, ep.code, learned)
    trace = Trace(ep.id, on_event)
    update_episode(ep.id, status="running", started_at=utcnow(), job_id=job_id or ep.job_id)
    result = EpisodeResult(ep.id, "running", None, 0, ep.playbook_id)
    progress = Progress()
    with recorded_ending(trace, result, progress), ExitStack() as owned:
        pbs = role_playbooks(ep.playbook_id)
        with write_session() as s:
            for pid in pbs.values():
                ensure_playbook(s, pid)
        trace.emit("route", RoutePayload(playbook_id=ep.playbook_id, reason=ep.routing_reason,
                                         review_mode=ep.review_mode, backend=ep.backend, model=ep.model,
                                         mode=spec.mode, workflow="review", playbooks=pbs))
        progress.step = "configure"
        full = _complete_roles(roles, settings)
        progress.step = "sandbox"
        if sandbox is None:
            sandbox = owned.enter_context(closing(get_sandbox(spec.backend, settings)))
        update_episode(ep.id, isolation=getattr(sandbox, "isolation", ""))
        run = _Run(spec, ep, trace, full, sandbox, settings, job_id, progress)
        _review_rounds(run, spec, ep, result)
        update_episode(ep.id, status=result.status, success=result.success, finished_at=utcnow(),
                       attempts=result.attempts, **progress.spent())
    return result


def _review_rounds(run: _Run, spec: TaskSpec, ep: Episode, result: EpisodeResult) -> None:
    """The generator's first version (asked again while its reply is unusable), then review and optimize
    rounds, then each role learns (or says why it did not)."""
    gen_attempts: list[Attempt] = []
    code: Optional[str] = None
    verdict: Optional[Verdict] = None
    while run.runs < ep.max_iterations and not run.out_of_time():
        code, verdict, why = run.generate(gen_attempts)
        if code is not None and verdict is not None:
            gen_attempts.append(Attempt(run.runs, code, verdict.feedback, verdict.passed, list(run.used["generator"])))
            break
        gen_attempts.append(Attempt(run.runs, "", why, False, list(run.used["generator"])))
    review_attempts: list[Attempt] = []
    optimizer_attempts: list[Attempt] = []
    if code is not None and verdict is not None:
        code, verdict = _rounds(run, ep, code, verdict, review_attempts, optimizer_attempts)
    passed = verdict is not None and verdict.passed
    result.success, result.attempts, result.code = passed, run.runs, code
    if spec.learn:
        outcome = (f"the final code PASSED after {run.runs} attempt(s)" if passed
                   else f"the final code FAILED after {run.runs} attempt(s)")
        timeout = OUT_OF_TIME if run.progress.out_of_time else None
        first = gen_attempts[-1] if gen_attempts else None
        learned = {"generator": run.learn(
            "generator", gen_attempts,
            f"first version {'PASSED' if first and first.passed else 'FAILED'}; {outcome}",
            skip=timeout or (None if first and first.code else NO_CODE))}
        if review_attempts:
            learned["reviewer"] = run.learn("reviewer", review_attempts, outcome, skip=timeout or (
                None if run.usable_reviews else "no reply of the reviewer could be used"))
        if optimizer_attempts:
            learned["optimizer"] = run.learn("optimizer", optimizer_attempts, outcome, skip=timeout or (
                None if any(a.code for a in optimizer_attempts) else NO_CODE))
        gen = learned["generator"]
        result.delta_id, result.version, result.reflection = gen["delta_id"], gen["version"], gen["reflection"]
        result.curation = {role: {k: v[k] for k in ("curation", "delta_id", "version", "status")}
                           for role, v in learned.items()}
        result.learning_skipped = "; ".join(f"{role}: {v['reason']}" for role, v in learned.items()
                                            if v.get("reason")) or None
        update_episode(ep.id, delta_id=gen["delta_id"])
    result.status = "succeeded" if passed else "failed"


def _rounds(run: _Run, ep: Episode, code: str, verdict: Verdict, review_attempts: list[Attempt],
            optimizer_attempts: list[Attempt]) -> tuple[str, Verdict]:
    """Review and optimize until a rewrite passes, the reviewer is content with passing code, or the
    rounds (or the time) run out; a rewrite that could not be used is asked for again under the same
    review. Returns the final code and its verdict."""
    pending: Optional[ReviewerOutput] = None  # reviewed, but the rewrite was unusable
    rewrite_why = review_why = ""
    for _ in range(max(1, ep.max_iterations - run.runs)):
        if run.out_of_time():
            break
        if pending is None:
            review, optimize, review_why = run.review(code, verdict)
        else:
            review, optimize = pending, True
        new_code: Optional[str] = None
        after: Optional[Verdict] = None
        if optimize:
            new_code, after, rewrite_why = run.optimize(code, verdict, review, rewrite_why if pending else "")
            optimizer_attempts.append(Attempt(run.runs, new_code or "", after.feedback if after else rewrite_why,
                                              bool(after and after.passed), list(run.used["optimizer"])))
        feedback = _review_feedback(verdict, review, optimize, after, review_why, rewrite_why)
        number = len(review_attempts) + (1 if pending is None else 0)
        attempt = Attempt(number, code, feedback, (after or verdict).passed, list(run.used["reviewer"]))
        if pending is None:
            review_attempts.append(attempt)
        else:  # the retried rewrite's outcome replaces "could not be used"
            review_attempts[-1] = attempt
        if optimize and (new_code is None or after is None):
            pending = review
            continue
        pending = None
        if not optimize or new_code is None or after is None:
            break
        code, verdict = new_code, after
        if verdict.passed:  # a passing rewrite is accepted
            break
    return code, verdict
