"""The one ACE loop: route, generate, execute, evaluate, refine, reflect, curate.

The UI, the CLI, the benchmark runner and the HTTP service all come through
here (`run_episode`, or `learn` for trajectories produced elsewhere). Every
step is written to the trace as it happens, in its own short transaction, so
a viewer in another process can follow a running episode. A failure at any
step ends the episode with an `error` event; what was recorded stays.
"""

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field
from sqlmodel import select

from core.jobs import queue as jobs
from core.config import Settings, get_settings
from core.storage.db import query_row, read_session, row_writer, write_session
from core.storage.models import Delta, Episode, Event, Reflection, utcnow
from core.playbook.ops import OpIn
from core.playbook.deltas import (BEGIN_MARK, END_MARK, _ensure_playbook, bullet_line, get_bullet, get_or_create_playbook,
                           render, retrieve, submit_delta, validate_playbook_id)
from core.roles.llm_roles import Attempt, Curator, Generator, LLMCurator, LLMGenerator, LLMReflector, Reflector
from core.llm.client import deferred_call_log
from core.playbook.routing import route
from core.sandbox.evaluate import MARKER

EventSink = Callable[[dict[str, Any]], None]


class TaskSpec(BaseModel):
    """What a user (or a benchmark) asks for."""

    task: str = Field(min_length=1, max_length=100_000)
    language: Literal["python", "javascript", "bash"] = "python"
    tests: Optional[str] = None
    expected_output: Optional[str] = None
    ground_truth: Optional[str] = None
    playbook_id: Optional[str] = None
    max_iterations: Optional[int] = Field(default=None, ge=1, le=10)
    review_mode: Optional[Literal["auto", "manual"]] = None
    mode: Literal["llm", "sandbox_only"] = "llm"
    code: Optional[str] = None  # for sandbox_only
    backend: Optional[Literal["local", "e2b"]] = None
    k: Optional[int] = Field(default=None, ge=0, le=200)
    entry_point: Optional[str] = None
    learn: bool = True  # False: evaluate with the playbook frozen (benchmark test split)
    bench_run_id: Optional[str] = None
    workflow: Literal["single", "review"] = "single"  # review: generator, reviewer, optimizer (core/review.py)


@dataclass
class Roles:
    generator: Generator
    reflector: Reflector
    curator: Curator

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> "Roles":
        from core.llm.client import LLMClient

        llm = LLMClient(settings)
        return cls(LLMGenerator(llm), LLMReflector(llm), LLMCurator(llm))


@dataclass
class EpisodeResult:
    episode_id: str
    status: str
    success: Optional[bool]
    attempts: int
    playbook_id: str
    code: Optional[str] = None
    delta_id: Optional[str] = None
    version: Optional[int] = None
    error: Optional[str] = None
    reflection: Optional[dict[str, Any]] = None
    curation: Optional[dict[str, Any]] = None


# ----------------------------------------------------------------- tracing


class StepError(Exception):
    """A failure inside a named step of the learning half."""

    def __init__(self, step: str, cause: Exception):
        super().__init__(str(cause))
        self.step, self.cause = step, cause


@contextmanager
def _step_name(step: str) -> Iterator[None]:
    try:
        yield
    except (jobs.Cancelled, StepError):
        raise
    except Exception as exc:
        raise StepError(step, exc) from exc


_EVENTS = Event.__table__  # type: ignore[attr-defined]
_EPISODES = Episode.__table__  # type: ignore[attr-defined]


class Trace:
    """Writes events for one episode as they happen."""

    def __init__(self, episode_id: str, sink: Optional[EventSink] = None):
        self.episode_id, self.sink = episode_id, sink
        self._lock = threading.Lock()

    def emit(self, kind: str, payload: dict[str, Any], attempt: Optional[int] = None,
             duration_ms: Optional[float] = None, started_at: Any = None,
             episode: Optional[dict[str, Any]] = None, rows: Optional[list[Any]] = None) -> None:
        """Append an event; in the same transaction update the episode and add `rows`."""
        self.emit_all([{"kind": kind, "payload": payload, "attempt": attempt, "duration_ms": duration_ms,
                        "started_at": started_at}], episode, rows)

    def emit_all(self, events: list[dict[str, Any]], episode: Optional[dict[str, Any]] = None,
                 rows: Optional[list[Any]] = None) -> None:
        """Append events that happened together (kind, payload, attempt, duration_ms, started_at) in one
        transaction, with the episode update and `rows`."""
        with self._lock, row_writer() as w:
            seq = int(w.scalar("SELECT coalesce(max(seq), 0) FROM event WHERE episode_id = ?", (self.episode_id,)))
            w.insert(_EVENTS, [{"episode_id": self.episode_id, "seq": seq + i, "kind": e["kind"],
                                "attempt": e.get("attempt"), "payload": e["payload"],
                                "started_at": e.get("started_at") or utcnow(), "duration_ms": e.get("duration_ms")}
                               for i, e in enumerate(events, 1)])
            w.add(rows or ())
            if episode:
                w.update(_EPISODES, {"id": self.episode_id}, episode)
        if self.sink is not None:
            for e in events:
                self.sink({"kind": e["kind"], "attempt": e.get("attempt"), "duration_ms": e.get("duration_ms"),
                           "payload": e["payload"]})

    @contextmanager
    def step(self, kind: str, attempt: Optional[int] = None, episode: Optional[dict[str, Any]] = None,
             rows: Optional[list[Any]] = None) -> Iterator[dict[str, Any]]:
        """Time a step; the caller fills the payload (and `episode`/`rows`, written with it at the end)."""
        payload: dict[str, Any] = {}
        started, t0 = utcnow(), time.perf_counter()
        with deferred_call_log() as calls:  # the step's LLM call log rows commit with its event
            yield payload
        self.emit(kind, payload, attempt, (time.perf_counter() - t0) * 1000, started, episode, (rows or []) + calls)


class OutputStream:
    """Batches sandbox output lines into `output` events for the live view."""

    def __init__(self, trace: Trace, attempt: int, every_s: float = 0.3, max_chars: int = 200_000):
        self.trace, self.attempt, self.every_s, self.max_chars = trace, attempt, every_s, max_chars
        self.buf: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.sent = 0
        self.live = False
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def callback(self, stream: str) -> Callable[[str], None]:
        def on_line(line: str) -> None:
            if MARKER in line:  # the test harness's report is not the program's output
                return
            with self.lock:
                if self.sent >= self.max_chars:
                    return
                self.buf[stream].append(line)
                self.sent += len(line)
                due = time.monotonic() - self.last >= self.every_s
            if due:
                self.live = True
                self.flush()
        return on_line

    def close(self) -> None:
        """Send the rest, unless nothing streamed yet: the execute event carries all of a short run's output."""
        if self.live:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            chunks = {k: "".join(v) for k, v in self.buf.items() if v}
            self.buf = {"stdout": [], "stderr": []}
            self.last = time.monotonic()
        for stream, text in chunks.items():
            self.trace.emit("output", {"stream": stream, "text": text}, self.attempt)


def record_run(trace: Trace, n: int, code: str, language: str, verdict: Any, isolation: str,
               totals: dict[str, float]) -> None:
    """A run's execute and evaluate events, written together (the verdict is known as the run ends)
    with the episode's running totals."""
    trace.emit_all([
        {"kind": "execute", "attempt": n, "duration_ms": verdict.execution.duration_ms,
         "payload": {"code": code, "language": language, "isolation": isolation,
                     "execution": verdict.execution.model_dump(by_alias=True)}},
        {"kind": "evaluate", "attempt": n,
         "payload": {"passed": verdict.passed, "total": verdict.total, "failed": verdict.failed,
                     "error": verdict.error, "feedback": verdict.feedback}}],
        episode={"isolation": isolation, "attempts": n, "code": code, "tokens": totals["tokens"],
                 "llm_ms": totals["llm_ms"], "sandbox_ms": totals["sandbox_ms"]})


# ----------------------------------------------------------------- episodes


def _update_episode(episode_id: str, **values: Any) -> None:
    with row_writer() as w:
        w.update(_EPISODES, {"id": episode_id}, values)


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
                 bench_run_id=spec.bench_run_id)
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


def _check_cancel(job_id: Optional[str]) -> None:
    if jobs.cancel_requested(job_id):
        raise jobs.Cancelled()


def _used_bullets_text(playbook_id: str, ids: list[str]) -> str:
    lines = []
    with read_session() as s:
        for bid in dict.fromkeys(ids):
            b = get_bullet(playbook_id, bid, s)
            if b is not None:
                lines.append(bullet_line(b))
    return "\n".join(lines)


def run_episode(spec: TaskSpec, *, episode_id: Optional[str] = None, roles: Optional[Roles] = None,
                sandbox: Any = None, job_id: Optional[str] = None, settings: Optional[Settings] = None,
                on_event: Optional[EventSink] = None, episode: Optional[Episode] = None) -> EpisodeResult:
    """Run one episode to the end and return how it went; never raises for the task's faults.

    `episode_id`: an episode recorded earlier (a queued or retried job); `episode`: one the caller
    has just stored (`create_episode`, or with rows of its own), so it is not read back.
    """
    from core.sandbox import get_sandbox
    from core.sandbox.evaluate import evaluate

    if spec.workflow == "review" and spec.mode == "llm":
        from core.episodes.review import run_review_episode

        return run_review_episode(spec, episode_id=episode_id or (episode.id if episode else None), roles=roles,
                                  sandbox=sandbox, job_id=job_id, settings=settings, on_event=on_event)
    settings = settings or get_settings()
    fresh = episode is not None or not episode_id
    ep = episode or (_load_episode(episode_id) if episode_id else create_episode(spec, settings, job_id))
    trace = Trace(ep.id, on_event)
    learned = None if fresh else learned_delta(ep)  # a new episode has learned nothing yet
    if learned:  # a retried job whose first run already learned: do not learn twice
        return EpisodeResult(ep.id, ep.status, ep.success, ep.attempts, ep.playbook_id, ep.code, learned)
    trace.emit("route", {"playbook_id": ep.playbook_id, "reason": ep.routing_reason, "review_mode": ep.review_mode,
                         "backend": ep.backend, "model": ep.model, "mode": spec.mode},
               episode={"status": "running", "started_at": utcnow(), "job_id": job_id or ep.job_id})
    result = EpisodeResult(ep.id, "running", None, 0, ep.playbook_id)
    own_sandbox = sandbox is None
    totals = {"tokens": 0, "llm_ms": 0.0, "sandbox_ms": 0.0}
    step = "setup"
    try:
        if spec.mode == "llm" and roles is None:
            step = "configure"
            roles = Roles.from_settings(settings)
        step = "sandbox"
        if sandbox is None:
            sandbox = get_sandbox(spec.backend, settings)
        attempts: list[Attempt] = []
        used: list[str] = []
        passed = False
        for n in range(1, ep.max_iterations + 1 if spec.mode == "llm" else 2):
            _check_cancel(job_id)
            if spec.mode == "llm":
                step = "generate"
                query = spec.task if not attempts else f"{spec.task}\n{attempts[-1].feedback[:500]}"
                hits = retrieve(ep.playbook_id, query, spec.k if spec.k is not None else settings.default_k)
                text = render(None, [h.bullet for h in hits], settings.prompt_token_budget)
                with trace.step("generate", n) as p:
                    out = roles.generator.generate(spec.task, spec.language, text, attempts, ep.id)  # type: ignore[union-attr]
                    p.update(messages=out.messages, response=out.raw, code=out.value.code,
                             reasoning=out.value.reasoning, bullet_ids=out.value.bullet_ids,
                             retrieved=[{"id": h.bullet.id, "score": round(h.score, 4), "scores": h.scores}
                                        for h in hits],
                             prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                             latency_ms=out.latency_ms, llm_mode=out.mode, call_ids=out.call_ids)
                totals["tokens"] += out.prompt_tokens + out.completion_tokens
                totals["llm_ms"] += out.latency_ms
                code = out.value.code
                used += [b for b in out.value.bullet_ids if b not in used]
            else:
                code = spec.code or ""
            _check_cancel(job_id)
            step = "execute"
            stream = OutputStream(trace, n)
            t0 = time.perf_counter()
            verdict = evaluate(sandbox, code, spec.language, tests=spec.tests, expected_output=spec.expected_output,
                               timeout=settings.sandbox_timeout, entry_point=spec.entry_point,
                               on_stdout=stream.callback("stdout"), on_stderr=stream.callback("stderr"))
            stream.close()
            totals["sandbox_ms"] += (time.perf_counter() - t0) * 1000
            record_run(trace, n, code, spec.language, verdict, getattr(sandbox, "isolation", ""), totals)
            attempts.append(Attempt(n, code, verdict.feedback, verdict.passed, list(used)))
            if verdict.passed:
                passed = True
                break
        result.success, result.attempts, result.code = passed, len(attempts), attempts[-1].code if attempts else None
        if spec.mode == "llm" and spec.learn:
            outcome = (f"succeeded on attempt {len(attempts)} of {ep.max_iterations}" if passed
                       else f"failed after {len(attempts)} attempts")
            step = "reflect"
            learned = reflect_and_curate(trace, roles, ep, spec.task, attempts, used, spec.ground_truth,  # type: ignore[arg-type]
                                         outcome, totals, job_id,
                                         finish={"status": "succeeded" if passed else "failed", "success": passed})
            result.delta_id, result.version = learned["delta_id"], learned["version"]
            result.reflection, result.curation = learned["reflection"], learned["curation"]
        result.status = "succeeded" if passed else "failed"
        if not (spec.mode == "llm" and spec.learn):  # when learning, the apply step already finished the episode
            _update_episode(ep.id, status=result.status, success=passed, finished_at=utcnow(),
                            tokens=totals["tokens"], llm_ms=totals["llm_ms"], sandbox_ms=totals["sandbox_ms"])
    except jobs.Cancelled:
        trace.emit("error", {"step": step, "message": "cancelled by request"})
        result.status, result.error = "cancelled", "cancelled by request"
        _update_episode(ep.id, status="cancelled", error=result.error, finished_at=utcnow())
        raise
    except Exception as exc:  # any step: record it clearly and end the episode
        if isinstance(exc, StepError):
            step, exc = exc.step, exc.cause
        message = f"{step} failed: {exc}"
        trace.emit("error", {"step": step, "message": message, "type": type(exc).__name__})
        result.status, result.error = "error", message
        _update_episode(ep.id, status="error", error=message, finished_at=utcnow(), tokens=totals["tokens"],
                        llm_ms=totals["llm_ms"], sandbox_ms=totals["sandbox_ms"])
    finally:
        if own_sandbox and sandbox is not None:
            sandbox.close()
    return result


def learned_delta(ep: Episode) -> Optional[str]:
    """The delta an episode already produced, if any (its row may not say so if a worker died)."""
    if ep.delta_id:
        return ep.delta_id
    with read_session() as s:
        return s.exec(select(Delta.id).where(Delta.episode_id == ep.id)).first()


def _load_episode(episode_id: str) -> Episode:
    with read_session() as s:
        ep = s.get(Episode, episode_id)
    if ep is None:
        raise KeyError(f"episode {episode_id!r} does not exist")
    return ep


# ----------------------------------------------------------------- learning


def reflect_and_curate(trace: Trace, roles: Roles, ep: Episode, task: str, attempts: list[Attempt],
                       used: list[str], ground_truth: Optional[str], outcome: str, totals: dict[str, float],
                       job_id: Optional[str] = None, reflector_instructions: str = "",
                       curator_instructions: str = "", finish: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The learning half: reflection on real feedback, then a delta (applied or pending).

    `finish`: episode fields to set with the apply event (the episode's final state), saving a write.
    """
    rows: list[Any] = []
    with _step_name("reflect"), trace.step("reflect", rows=rows) as p:
        refl = roles.reflector.reflect(task, attempts, _used_bullets_text(ep.playbook_id, used), ground_truth, ep.id,
                                       reflector_instructions)
        p.update(messages=refl.messages, response=refl.raw, reflection=refl.value.model_dump(),
                 prompt_tokens=refl.prompt_tokens, completion_tokens=refl.completion_tokens,
                 latency_ms=refl.latency_ms, call_ids=refl.call_ids)
        r = refl.value
        rows.append(Reflection(episode_id=ep.id, playbook_id=ep.playbook_id, reasoning=r.reasoning,
                               error_identification=r.error_identification,
                               root_cause_analysis=r.root_cause_analysis, correct_approach=r.correct_approach,
                               key_insight=r.key_insight, bullet_tags=[t.model_dump() for t in r.bullet_tags]))
    totals["tokens"] += refl.prompt_tokens + refl.completion_tokens
    totals["llm_ms"] += refl.latency_ms
    _check_cancel(job_id)
    shown = [h.bullet for h in retrieve(ep.playbook_id, f"{task}\n{r.key_insight}", 50)]
    pb_text = render(None, shown) + _merge_hints(ep.playbook_id, [b.id for b in shown])
    with _step_name("curate"), trace.step("curate") as p:
        cur = roles.curator.curate(task, r, pb_text, outcome, ep.id, curator_instructions)
        p.update(messages=cur.messages, response=cur.raw, curation=cur.value.model_dump(),
                 prompt_tokens=cur.prompt_tokens, completion_tokens=cur.completion_tokens,
                 latency_ms=cur.latency_ms, call_ids=cur.call_ids)
    totals["tokens"] += cur.prompt_tokens + cur.completion_tokens
    totals["llm_ms"] += cur.latency_ms
    _check_cancel(job_id)
    tag_ops = [OpIn(type="TAG", bullet_id=t.id, tag=t.tag, justification=f"reflector: {outcome}")
               for t in r.bullet_tags]
    ops = tag_ops + list(cur.value.operations)
    # Stored (and in auto mode applied) in one transaction; the apply event then points the episode at
    # its delta, which a retried job checks so it never learns twice.
    auto = ep.review_mode == "auto"
    ep_update: dict[str, Any] = {}
    with _step_name("apply"), trace.step("apply", episode=ep_update) as p:
        delta_id, applied = submit_delta(ep.playbook_id, ops, cur.value.reasoning, episode_id=ep.id,
                                         source="curator", auto=auto)
        ep_update["delta_id"] = delta_id
        if finish is not None:
            ep_update.update(finish, finished_at=utcnow(), tokens=totals["tokens"], llm_ms=totals["llm_ms"],
                             sandbox_ms=totals["sandbox_ms"])
        status = "empty" if not ops else ("applied" if applied is not None else "pending")
        version = applied.version if applied is not None else None
        p.update(delta_id=delta_id, review_mode=ep.review_mode, operations=len(ops), status=status, version=version)
        if applied is not None:
            p.update(results=[vars(x) for x in applied.results],
                     rejected=[{"op": i, "error": e} for i, e in applied.rejected])
    return {"episode_id": ep.id, "reflection": r.model_dump(), "curation": cur.value.model_dump(),
            "delta_id": delta_id, "version": version, "status": status}


def _merge_hints(playbook_id: str, ids: list[str]) -> str:
    """Near-duplicate pairs among the bullets the Curator sees, so it can MERGE them."""
    from core.retrieval.search import similar_pairs

    try:
        pairs = similar_pairs(playbook_id, among=ids, limit=5)
    except Exception:  # hints are optional; an embedder hiccup must not stop learning
        return ""
    if not pairs:
        return ""
    return "\n\nNear-duplicate bullets (consider MERGE): " + "; ".join(
        f"[{a}] ~ [{b}] (similarity {v:.2f})" for a, b, v in pairs)


_MARKED = re.compile(re.escape(BEGIN_MARK) + r"(.*?)" + re.escape(END_MARK), re.S)
_BULLET_ID = re.compile(r"\[([A-Za-z0-9_.-]+)\]\s+helpful=")


def extract_bullet_ids(*texts: Optional[str]) -> list[str]:
    """Bullet ids found between the playbook markers (what an agent was shown)."""
    ids: list[str] = []
    for t in texts:
        for block in _MARKED.findall(t or ""):
            ids += [i for i in _BULLET_ID.findall(block) if i not in ids]
    return ids


def learn(playbook_id: str, user_message: str, trajectory: str, ground_truth: Optional[str] = None,
          evaluation: Optional[str] = None, reflector_instructions: str = "", curator_instructions: str = "",
          job_id: Optional[str] = None, roles: Optional[Roles] = None, episode_id: Optional[str] = None) -> dict[str, Any]:
    """Learn from a run that happened elsewhere (the service's episodes/learn)."""
    settings = get_settings()
    ep = _load_episode(episode_id) if episode_id else create_learn_episode(playbook_id, user_message, ground_truth,
                                                                           job_id)
    if learned_delta(ep):  # a retried job whose first run already learned: do not learn twice
        return {"episode_id": ep.id, "reflection": None, "curation": None, "delta_id": learned_delta(ep),
                "version": None, "status": "already learned"}
    _update_episode(ep.id, status="running", started_at=utcnow(), error=None)
    roles = roles or Roles.from_settings(settings)
    trace = Trace(ep.id)
    used = extract_bullet_ids(user_message, trajectory)
    feedback = f"Trajectory:\n{trajectory}" + (f"\n\nEvaluation:\n{evaluation}" if evaluation else "")
    passed = _looks_passed(evaluation)
    attempt = Attempt(1, trajectory, feedback, bool(passed), used)
    trace.emit("route", {"playbook_id": ep.playbook_id, "reason": ep.routing_reason, "used_bullets": used})
    totals: dict[str, float] = {"tokens": 0, "llm_ms": 0.0, "sandbox_ms": 0.0}
    outcome = evaluation or "no evaluation given"
    try:
        out = reflect_and_curate(trace, roles, ep, user_message, [attempt], used, ground_truth, outcome[:500],
                                 totals, job_id, reflector_instructions, curator_instructions)
    except Exception as exc:
        step, cause = (exc.step, exc.cause) if isinstance(exc, StepError) else ("learn", exc)
        message = f"{step} failed: {cause}"
        trace.emit("error", {"step": step, "message": message, "type": type(cause).__name__})
        _update_episode(ep.id, status="error", error=message, finished_at=utcnow())
        raise cause from None
    _update_episode(ep.id, status="failed" if passed is False else "succeeded",
                    success=passed, attempts=1, finished_at=utcnow(), tokens=totals["tokens"],
                    llm_ms=totals["llm_ms"])
    return out


def create_learn_episode(playbook_id: str, user_message: str, ground_truth: Optional[str] = None,
                         job_id: Optional[str] = None) -> Episode:
    """The episode a learn request shows up as in the trace and reflection pages."""
    settings = get_settings()
    with write_session() as s:
        pb = _ensure_playbook(s, playbook_id)
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


def episode_events(episode_id: str, after_seq: int = 0) -> list[Event]:
    with read_session() as s:
        stmt = select(Event).where(Event.episode_id == episode_id, Event.seq > after_seq).order_by(Event.seq)
        return list(s.exec(stmt))


def mark_interrupted(job: Any) -> None:
    """A worker died under this job's episode: say so in its trace."""
    episode_id = (job.payload or {}).get("episode_id")
    if not episode_id:
        return
    msg = "the worker running this episode stopped (killed?); " + (
        "it will be run again" if job.status == "queued" else "no attempts are left")
    Trace(episode_id).emit("error", {"step": "worker", "message": msg})
    _update_episode(episode_id, status="queued" if job.status == "queued" else "error",
                    error=None if job.status == "queued" else msg)
