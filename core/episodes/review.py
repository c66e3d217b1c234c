"""The review workflow: generator, reviewer and optimizer, each with its own playbook.

A generator writes code and it runs; a reviewer reads the code and what really
happened and says whether it needs optimizing; an optimizer rewrites it and
the rewrite runs and is judged again. Every step lands in the same trace as
the single-role loop (`generate`, `execute`, `evaluate`, `review`, `optimize`,
then `reflect`/`curate`/`apply` once per role, each payload naming its
`role`). Each role learns into its own playbook (`<pid>`, `<pid>-reviewer`,
`<pid>-optimizer`) through the same propose/auto-apply path, so every role's
deltas can be curated in the diff viewer.

Reached through `core.episodes.loop.run_episode` with `TaskSpec(workflow="review")`.
"""

import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

from core.config import Settings, get_settings
from core.episodes.events import EventSink, GeneratePayload, LLMFields, RetrievedBullet, ReviewPayload, RoutePayload
from core.episodes.learning import reflect_and_curate
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


def _llm_fields(out: LLMResult[Any]) -> LLMFields:
    return LLMFields(messages=out.messages, response=out.raw, prompt_tokens=out.prompt_tokens,
                     completion_tokens=out.completion_tokens, latency_ms=out.latency_ms, llm_mode=out.mode,
                     call_ids=out.call_ids)


def _retrieved(hits: list[Any]) -> list[RetrievedBullet]:
    return [RetrievedBullet(id=h.bullet.id, score=round(h.score, 4)) for h in hits]


class _Run:
    """One review episode's state: what ran, what each role used, the totals."""

    def __init__(self, spec: TaskSpec, ep: Episode, trace: Trace, roles: ReviewRoles, sandbox: Any,
                 settings: Settings, job_id: Optional[str], progress: Progress):
        self.spec, self.ep, self.trace, self.roles, self.sandbox = spec, ep, trace, roles, sandbox
        self.settings, self.job_id, self.progress = settings, job_id, progress
        self.pbs = role_playbooks(ep.playbook_id)
        self.totals = progress.totals
        self.used: dict[str, list[str]] = {r: [] for r in ROLE_SUFFIX}
        self.runs = 0

    def playbook_text(self, role: str, query: str) -> tuple[str, list[Any]]:
        k = self.spec.k if self.spec.k is not None else self.settings.default_k
        hits = retrieve(self.pbs[role], query, k)
        return render(None, [h.bullet for h in hits], self.settings.prompt_token_budget), hits

    def count(self, role: str, out: LLMResult[Any], ids: list[str]) -> None:
        self.totals["tokens"] += out.prompt_tokens + out.completion_tokens
        self.totals["llm_ms"] += out.latency_ms
        self.used[role] += [b for b in ids if b not in self.used[role]]

    def execute(self, code: str, role: str) -> Verdict:
        check_cancel(self.job_id)
        self.progress.step, self.runs = "execute", self.runs + 1
        n, spec, trace = self.runs, self.spec, self.trace.as_role(role)
        stream = OutputStream(trace, n)
        t0 = time.perf_counter()
        verdict = evaluate(self.sandbox, code, spec.language, tests=spec.tests, expected_output=spec.expected_output,
                           timeout=self.settings.sandbox_timeout, entry_point=spec.entry_point,
                           on_stdout=stream.callback("stdout"), on_stderr=stream.callback("stderr"))
        stream.close()
        self.totals["sandbox_ms"] += (time.perf_counter() - t0) * 1000
        record_run(trace, n, code, spec.language, verdict, getattr(self.sandbox, "isolation", ""), self.totals)
        return verdict

    def generate(self) -> tuple[str, Verdict]:
        check_cancel(self.job_id)
        self.progress.step = "generate"
        text, hits = self.playbook_text("generator", self.spec.task)
        with self.trace.as_role("generator").step("generate", 1) as p:
            out = self.roles.generator.generate(self.spec.task, self.spec.language, text, [], self.ep.id)
            p.update(GeneratePayload(code=out.value.code, reasoning=out.value.reasoning,
                                     bullet_ids=out.value.bullet_ids, retrieved=_retrieved(hits), **_llm_fields(out)))
        self.count("generator", out, out.value.bullet_ids)
        return out.value.code, self.execute(out.value.code, "generator")

    def review(self, code: str, verdict: Verdict) -> tuple[ReviewerOutput, bool]:
        check_cancel(self.job_id)
        self.progress.step = "review"
        text, hits = self.playbook_text("reviewer", f"{self.spec.task}\n{verdict.feedback[:500]}")
        with self.trace.as_role("reviewer").step("review", self.runs) as p:
            reviewer: Reviewer = self.roles.reviewer  # type: ignore[assignment]
            out = reviewer.review(self.spec.task, self.spec.language, code, verdict.feedback, text, self.ep.id)
            r = out.value
            forced = not verdict.passed and not r.needs_optimization
            p.update(ReviewPayload(needs_optimization=r.needs_optimization, forced=forced, issues=r.issues,
                                   suggestions=r.suggestions, reasoning=r.reasoning, bullet_ids=r.bullet_ids,
                                   passed=verdict.passed, retrieved=_retrieved(hits), **_llm_fields(out)))
        self.count("reviewer", out, r.bullet_ids)
        return r, r.needs_optimization or forced

    def optimize(self, code: str, verdict: Verdict, review: ReviewerOutput) -> tuple[str, Verdict]:
        check_cancel(self.job_id)
        self.progress.step = "optimize"
        query = f"{self.spec.task}\n{' '.join(review.issues)[:500]}"
        text, hits = self.playbook_text("optimizer", query)
        with self.trace.as_role("optimizer").step("optimize", self.runs + 1) as p:
            optimizer: Optimizer = self.roles.optimizer  # type: ignore[assignment]
            out = optimizer.optimize(self.spec.task, self.spec.language, code, verdict.feedback, review, text,
                                     self.ep.id)
            p.update(GeneratePayload(code=out.value.code, reasoning=out.value.reasoning,
                                     bullet_ids=out.value.bullet_ids, retrieved=_retrieved(hits), **_llm_fields(out)))
        self.count("optimizer", out, out.value.bullet_ids)
        return out.value.code, self.execute(out.value.code, "optimizer")

    def learn(self, role: str, attempts: list[Attempt], outcome: str) -> dict[str, Any]:
        self.progress.step = "reflect"
        # the learning half reads only these three fields; the episode row stays the generator's
        role_ep = SimpleNamespace(id=self.ep.id, playbook_id=self.pbs[role], review_mode=self.ep.review_mode)
        trace = self.trace.as_role(role)
        return reflect_and_curate(trace, self.roles, role_ep, self.spec.task, attempts,  # type: ignore[arg-type]
                                  self.used[role], self.spec.ground_truth, outcome, self.totals, self.job_id,
                                  reflector_instructions=REFLECT_FOR[role])


def _review_feedback(verdict: Verdict, review: ReviewerOutput, optimize: bool, after: Optional[Verdict]) -> str:
    issues = "; ".join(review.issues) or "none"
    then = ("no rewrite was asked for" if not optimize else
            f"the optimizer's rewrite {'PASSED' if after and after.passed else 'FAILED'}"
            + (f": {after.feedback[:600]}" if after else ""))
    return (f"Execution of the reviewed code:\n{clip(verdict.feedback, 1500)}\n\nReviewer decision: "
            f"needs_optimization={review.needs_optimization}; issues: {issues}; suggestions: "
            f"{review.suggestions or 'none'}\n\nWhat followed: {then}")


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
        update_episode(ep.id, status=result.status, success=result.success, finished_at=utcnow(), **progress.spent())
    return result


def _review_rounds(run: _Run, spec: TaskSpec, ep: Episode, result: EpisodeResult) -> None:
    """The generator's first version, then review and optimize rounds, then each role learns."""
    code, verdict = run.generate()
    first = Attempt(1, code, verdict.feedback, verdict.passed, list(run.used["generator"]))
    review_attempts: list[Attempt] = []
    optimizer_attempts: list[Attempt] = []
    for _ in range(max(1, ep.max_iterations - 1)):
        review, optimize = run.review(code, verdict)
        after = None
        if optimize:
            new_code, after = run.optimize(code, verdict, review)
            optimizer_attempts.append(Attempt(run.runs, new_code, after.feedback, after.passed,
                                              list(run.used["optimizer"])))
        feedback = _review_feedback(verdict, review, optimize, after)
        review_attempts.append(Attempt(len(review_attempts) + 1, code, feedback, (after or verdict).passed,
                                       list(run.used["reviewer"])))
        if not optimize or after is None:
            break
        code, verdict = new_code, after
        if verdict.passed:  # a passing rewrite is accepted
            break
    passed = verdict.passed
    result.success, result.attempts, result.code = passed, run.runs, code
    if spec.learn:
        outcome = (f"the final code PASSED after {run.runs} run(s)" if passed
                   else f"the final code FAILED after {run.runs} run(s)")
        learned = {"generator": run.learn("generator", [first], f"first version "
                                          f"{'PASSED' if first.passed else 'FAILED'}; {outcome}"),
                   "reviewer": run.learn("reviewer", review_attempts, outcome)}
        if optimizer_attempts:
            learned["optimizer"] = run.learn("optimizer", optimizer_attempts, outcome)
        gen = learned["generator"]
        result.delta_id, result.version, result.reflection = gen["delta_id"], gen["version"], gen["reflection"]
        result.curation = {role: {k: v[k] for k in ("curation", "delta_id", "version", "status")}
                           for role, v in learned.items()}
        update_episode(ep.id, delta_id=gen["delta_id"])
    result.status = "succeeded" if passed else "failed"
