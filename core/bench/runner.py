"""Benchmark runs: does learning help, and does it generalize?

A run splits a suite into train and test tasks. The ACE arm learns on the
train split for N epochs into its playbook (offline adaptation), then is
evaluated on the held-out test split with that playbook frozen. A baseline arm
(same model, an empty playbook, k=0, no learning) runs the same tasks in the
same run, so the comparison is fair. Every task goes through the one loop
(`core.episodes.loop.run_episode`), so each has a full trace.

Results are rows keyed (run, arm, phase, epoch, task): a row is claimed
before its episode starts (error = RUNNING) and finished after, so a run
killed at any point resumes without running a finished task again and
without learning twice from one (see `_run_unit`). Tasks run concurrently
on a thread pool, one sandbox per thread (so one E2B sandbox per thread).
"""

import csv
import io
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from core.jobs import queue as jobs
from core.config import get_settings
from core.storage.db import query_row, read_session, row_writer, write_session
from core.episodes.loop import Roles, TaskSpec, learned_delta, new_episode, run_episode
from core.storage.models import BenchResult, BenchRun, Episode, LLMCall, Job, utcnow
from core.bench.suites import Suite, SuiteError, SuiteTask, load_suite

RUNNING = "(running)"  # BenchResult.error while its task is under way; resume finishes or reruns it
Progress = Callable[[dict[str, Any]], None]
RESULT_FIELDS = ("arm", "phase", "epoch", "task_key", "success", "attempts", "tokens", "cost", "duration_ms",
                 "llm_ms", "sandbox_ms", "episode_id", "error")


class BenchConfig(BaseModel):
    """What a run does; stored on the run so a resume does exactly the same."""

    suite: str  # a suite name, or the resolved path of a .jsonl file
    epochs: int = Field(default=1, ge=0, le=100)
    split: float = Field(default=0.5, ge=0.0, le=1.0)  # fraction of tasks the ACE arm learns on
    limit: Optional[int] = Field(default=None, ge=1)
    concurrency: int = Field(default=2, ge=1, le=64)
    seed: int = 0
    max_iterations: int = Field(default=1, ge=1, le=10)  # 1: pass@1 with no refinement
    backend: Optional[Literal["local", "e2b"]] = None
    workflow: Literal["single", "review"] = "single"
    price_in: float = Field(default=0.0, ge=0)  # USD per million prompt tokens
    price_out: float = Field(default=0.0, ge=0)  # USD per million completion tokens
    train: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One task in one arm, phase and epoch: one row, one episode."""

    arm: str
    phase: str
    epoch: int
    task: SuiteTask

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.arm, self.phase, self.epoch, self.task.id)


# ------------------------------------------------------------------ configuring a run


def parse_split(text: str) -> float:
    """'0.5', '50%' or '60/40' (train/test) -> the train fraction."""
    t = str(text).strip()
    try:
        if "/" in t:
            a, b = (float(x) for x in t.split("/", 1))
            value = a / (a + b)
        elif t.endswith("%"):
            value = float(t[:-1]) / 100
        else:
            value = float(t)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"invalid split {text!r}: use a train fraction like 0.5, 50% or 60/40") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"invalid split {text!r}: the train fraction must be between 0 and 1")
    return value


def split_tasks(tasks: list[SuiteTask], split: float, seed: int = 0,
                limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """A seeded, stable split of the first `limit` tasks into train and test ids."""
    ids = [t.id for t in tasks[:limit]]
    random.Random(seed).shuffle(ids)
    n_train = round(len(ids) * split)
    if 0 < split < 1 and len(ids) >= 2:  # a real split keeps at least one task on each side
        n_train = min(max(n_train, 1), len(ids) - 1)
    return ids[:n_train], ids[n_train:]


def create_run(suite: str, epochs: int = 1, split: float = 0.5, limit: Optional[int] = None, concurrency: int = 2,
               *, playbook_id: Optional[str] = None, **options: Any) -> str:
    """Record a run (status queued) with its split fixed; returns the run id.

    `options`: seed, max_iterations, backend, workflow, price_in, price_out
    (prices default to ACE_PRICE_INPUT / ACE_PRICE_OUTPUT, USD per 1M tokens).
    """
    s = load_suite(suite)
    settings = get_settings()
    options.setdefault("price_in", settings.price_input)
    options.setdefault("price_out", settings.price_output)
    cfg = BenchConfig(suite=s.path if s.source == "file" else s.name, epochs=epochs, split=split, limit=limit,
                      concurrency=concurrency, **options)
    cfg.train, cfg.test = split_tasks(s.tasks, cfg.split, cfg.seed, cfg.limit)
    run = BenchRun(suite=s.name, config={})
    if playbook_id is not None:
        from core.playbook.deltas import validate_playbook_id

        validate_playbook_id(playbook_id)
    run.playbook_id = playbook_id or run.id
    run.config = cfg.model_dump()
    with write_session() as ses:
        ses.add(run)
    return run.id


def start_bench(suite: str, epochs: int = 1, split: float = 0.5, limit: Optional[int] = None, concurrency: int = 2,
                **options: Any) -> str:
    """What the UI calls: record a run and queue it as a `bench` job; returns the run id.

    Raises LLMNotConfigured (its message says what to set) before recording anything.
    """
    _require_llm()
    run_id = create_run(suite, epochs, split, limit, concurrency, **options)
    _queue(run_id)
    return run_id


def _require_llm() -> None:
    from core.llm.client import LLMNotConfigured

    if not get_settings().llm_configured:
        raise LLMNotConfigured()


def resume_bench(run_id: str) -> str:
    """Queue a stopped run again (what the UI's resume button calls); returns the job id."""
    run = get_run(run_id)
    if run.status in ("running", "queued") and run.job_id and _job_active(run.job_id):
        raise ValueError(f"run {run_id} is already {run.status}")
    return _queue(run_id)


def cancel_bench(run_id: str) -> str:
    """Ask the run's job to stop; finished tasks stay and the run can be resumed."""
    run = get_run(run_id)
    if not run.job_id:
        raise ValueError(f"run {run_id} has no job (it runs in a terminal: press Ctrl+C there)")
    return jobs.cancel(run.job_id)


def _queue(run_id: str) -> str:
    """Queue the run's job and point the run at it, in one transaction."""
    job = jobs.new_job("bench", {"run_id": run_id}, max_attempts=3)
    with row_writer() as w:
        w.add([job])
        w.update(BenchRun.__table__, {"id": run_id},  # type: ignore[attr-defined]
                 {"job_id": job.id, "status": "queued", "error": None})
    return job.id


def _job_active(job_id: str) -> bool:
    job = jobs.get_job(job_id)
    return job is not None and job.status in ("queued", "running")


def get_run(run_id: str) -> BenchRun:
    with read_session() as s:
        run = s.get(BenchRun, run_id)
    if run is None:
        raise KeyError(f"benchmark run {run_id!r} does not exist")
    return run


def _set_run(run_id: str, **values: Any) -> None:
    with write_session() as s:
        run = s.get(BenchRun, run_id)
        if run is not None:
            for k, v in values.items():
                setattr(run, k, v)
            s.add(run)


# ------------------------------------------------------------------ running


def baseline_playbook(run: BenchRun) -> str:
    return f"{run.playbook_id}-baseline"


def _units(cfg: BenchConfig, suite: Suite) -> list[list[Unit]]:
    """Stages run in order; inside a stage tasks run concurrently."""
    by_id = {t.id: t for t in suite.tasks}
    missing = [k for k in cfg.train + cfg.test if k not in by_id]
    if missing:
        raise SuiteError(f"suite {suite.name!r} no longer has tasks {', '.join(missing[:5])}: the run cannot resume")
    train, test = [by_id[k] for k in cfg.train], [by_id[k] for k in cfg.test]
    baseline = [Unit("baseline", "train", 0, t) for t in train] + [Unit("baseline", "test", 0, t) for t in test]
    stages = [[Unit("ace", "train", e, t) for t in train] for e in range(1, cfg.epochs + 1)] if train else []
    final = [Unit("ace", "test", cfg.epochs, t) for t in test]
    if stages:
        stages[0] = baseline + stages[0]  # the baseline does not wait for learning
        return stages + [final]
    return [baseline + final]


def _spec(run: BenchRun, cfg: BenchConfig, u: Unit) -> TaskSpec:
    t, ace = u.task, u.arm == "ace"
    return TaskSpec(task=t.task, language=t.language, tests=t.tests, expected_output=t.expected_output,
                    entry_point=t.entry_point, playbook_id=run.playbook_id if ace else baseline_playbook(run),
                    max_iterations=cfg.max_iterations, review_mode="auto", backend=cfg.backend,
                    k=None if ace else 0, learn=ace and u.phase == "train", bench_run_id=run.id,
                    workflow=cfg.workflow)


@dataclass
class _Ctx:
    run: BenchRun
    cfg: BenchConfig
    roles: Optional[Roles]
    sandbox_factory: Callable[[], Any]
    job_id: Optional[str]
    on_progress: Optional[Progress]
    total: int
    done: int
    left: dict[tuple[str, str, int, str], BenchResult]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)
    sandboxes: list[Any] = field(default_factory=list)
    errors_in_row: int = 0
    cancelled: bool = False
    failure: Optional[str] = None

    def sandbox(self) -> Any:
        sb = getattr(self.local, "sandbox", None)
        if sb is None:
            sb = self.local.sandbox = self.sandbox_factory()
            with self.lock:
                self.sandboxes.append(sb)
        return sb

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_progress is not None:
            self.on_progress(event)


def _claim(run_id: str, u: Unit, ep: Episode, row: Optional[BenchResult]) -> bool:
    """Store the task's new episode and mark its row running, in one transaction.

    Together, so a run killed between the two never leaves an episode no row points to.
    """
    try:
        with row_writer() as w:
            w.add([ep])
            if row is None:
                w.add([BenchResult(run_id=run_id, arm=u.arm, phase=u.phase, epoch=u.epoch, task_key=u.task.id,
                                   episode_id=ep.id, error=RUNNING)])
            else:
                w.update(BenchResult.__table__, {"id": row.id},  # type: ignore[attr-defined]
                         {"episode_id": ep.id, "error": RUNNING})
        return True
    except IntegrityError:  # the row exists: another runner has the task
        return False


def _learned_or_frozen(ep: Episode, spec: TaskSpec) -> bool:
    """The episode ended and (if it was to learn) learned: storing its result is all that is left."""
    return ep.status in ("succeeded", "failed") and (not spec.learn or learned_delta(ep) is not None)


def _cost(episode_id: str, cfg: BenchConfig) -> float:
    if not (cfg.price_in or cfg.price_out):
        return 0.0
    with read_session() as s:
        p, c = s.exec(select(func.coalesce(func.sum(LLMCall.prompt_tokens), 0),
                             func.coalesce(func.sum(LLMCall.completion_tokens), 0))
                      .where(LLMCall.episode_id == episode_id)).one()
    return (int(p) * cfg.price_in + int(c) * cfg.price_out) / 1e6


def _finish(ctx: _Ctx, u: Unit, episode_id: str, t0: Optional[float]) -> dict[str, Any]:
    """Copy the episode's outcome into its row: one short transaction."""
    cost = _cost(episode_id, ctx.cfg)
    found = query_row("SELECT status, error, success, attempts, tokens, llm_ms, sandbox_ms FROM episode "
                      "WHERE id = ?", (episode_id,))  # plain values: none of these columns needs its type
    if found is None:
        raise KeyError(f"episode {episode_id!r} does not exist")
    status, err, success, attempts, tokens, llm_ms, sandbox_ms = found
    if t0 is not None:
        duration = (time.perf_counter() - t0) * 1000
    else:  # a killed run's episode, finished now: its own start and end
        with read_session() as s:
            span = s.connection().execute(select(  # type: ignore[call-overload]
                Episode.started_at, Episode.finished_at).where(Episode.id == episode_id)).one()
        duration = (span.finished_at - span.started_at).total_seconds() * 1000 \
            if span.started_at and span.finished_at else 0.0
    error = (err or status) if status not in ("succeeded", "failed") else None
    values = {"success": bool(success), "attempts": attempts, "tokens": tokens, "cost": cost,
              "duration_ms": duration, "llm_ms": llm_ms, "sandbox_ms": sandbox_ms, "error": error,
              "episode_id": episode_id}
    with row_writer() as w:  # plain statements: this runs once per task
        if cost:
            w.update(Episode.__table__, {"id": episode_id}, {"cost": cost})  # type: ignore[attr-defined]
        w.update(BenchResult.__table__, {"run_id": ctx.run.id, "arm": u.arm, "phase": u.phase,  # type: ignore[attr-defined]
                                         "epoch": u.epoch, "task_key": u.task.id}, values)
    with ctx.lock:
        ctx.done += 1
        ctx.errors_in_row = ctx.errors_in_row + 1 if error else 0
        if error and ctx.errors_in_row >= max(5, 2 * ctx.cfg.concurrency):
            ctx.failure = f"stopped after {ctx.errors_in_row} tasks in a row could not run; last error: {error}"
            ctx.stop.set()
        done = ctx.done
    event = {"event": "result", "arm": u.arm, "phase": u.phase, "epoch": u.epoch, "task_key": u.task.id,
             **values, "done": done, "total": ctx.total}
    ctx.emit(event)
    return event


def _run_unit(ctx: _Ctx, u: Unit) -> Optional[dict[str, Any]]:
    """Run one task unless it is done; finish what a killed run left half done."""
    if ctx.stop.is_set():
        return None
    if jobs.cancel_requested(ctx.job_id):
        ctx.cancelled = True
        ctx.stop.set()
        return None
    t0 = time.perf_counter()
    spec = _spec(ctx.run, ctx.cfg, u)
    row = ctx.left.get(u.key)  # a row a stopped run left running or errored; None: never started
    if row is not None and row.error is None:
        return None  # finished before
    ep, fresh = None, False
    if row is not None and row.episode_id:
        with read_session() as s:
            ep = s.get(Episode, row.episode_id)
    if ep is None:
        ep, fresh = new_episode(spec, job_id=ctx.job_id), True
        if not _claim(ctx.run.id, u, ep, row):
            return None  # another runner has it
    elif _learned_or_frozen(ep, spec):
        return _finish(ctx, u, ep.id, None)  # killed after the episode ended, before its row was written
    try:
        run_episode(spec, episode_id=ep.id, episode=ep if fresh else None, roles=ctx.roles, sandbox=ctx.sandbox(),
                    job_id=ctx.job_id)
    except jobs.Cancelled:
        ctx.cancelled = True
        ctx.stop.set()
        return None
    return _finish(ctx, u, ep.id, t0)


def _existing(run_id: str) -> tuple[set[tuple[str, str, int, str]], dict[tuple[str, str, int, str], BenchResult]]:
    """Keys already finished, and rows a stopped run left running or errored."""
    done, left = set(), {}
    for r in results(run_id, include_running=True):
        key = (r.arm, r.phase, r.epoch, r.task_key)
        if r.error is None:
            done.add(key)
        else:
            left[key] = r
    return done, left


def run_bench(run_id: str, *, roles: Optional[Roles] = None, sandbox_factory: Optional[Callable[[], Any]] = None,
              job_id: Optional[str] = None, on_progress: Optional[Progress] = None) -> dict[str, Any]:
    """Run (or resume) a run to the end in this process; returns its summary.

    Tasks already stored are skipped; tasks that errored are run again.
    """
    run = get_run(run_id)
    cfg = BenchConfig.model_validate(run.config)
    stages = _units(cfg, load_suite(cfg.suite))
    if roles is None:
        roles = _roles(cfg)
    if sandbox_factory is None:
        from core.sandbox import get_sandbox

        def sandbox_factory() -> Any:
            return get_sandbox(cfg.backend)

    done, left = _existing(run_id)
    ctx = _Ctx(run, cfg, roles, sandbox_factory, job_id, on_progress,
               total=sum(len(st) for st in stages), done=len(done), left=left)
    _set_run(run_id, status="running", error=None, finished_at=None, job_id=job_id or run.job_id)
    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix=f"bench-{run_id[-6:]}")
    interrupted = False
    try:
        for n, stage in enumerate(stages, 1):
            todo = [u for u in stage if u.key not in done]
            ctx.emit({"event": "stage", "stage": n, "stages": len(stages), "units": len(stage), "todo": len(todo),
                      "arms": sorted({(u.arm, u.phase, u.epoch) for u in stage}), "done": ctx.done, "total": ctx.total})
            futures: set[Future[Any]] = {pool.submit(_run_unit, ctx, u) for u in todo}
            while futures:
                finished, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()  # a bug in the runner itself surfaces here
            if ctx.stop.is_set():
                break
    except BaseException as exc:
        ctx.stop.set()
        interrupted = isinstance(exc, KeyboardInterrupt)  # do not wait for running tasks: resume reruns them
        _set_run(run_id, status="cancelled" if interrupted else "failed", finished_at=utcnow(),
                 error=f"interrupted; resume with: ace bench --resume {run_id}" if interrupted
                 else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        for sb in ctx.sandboxes:
            try:
                sb.close()
            except Exception:
                pass
    summary = summarize(run_id)
    if ctx.cancelled:
        _set_run(run_id, status="cancelled", summary=summary, finished_at=utcnow(), error="cancelled by request")
    elif ctx.failure:
        _set_run(run_id, status="failed", summary=summary, finished_at=utcnow(), error=ctx.failure)
    else:
        _set_run(run_id, status="done", summary=summary, finished_at=utcnow(), error=None)
    return summary


def mark_job_interrupted(job: Job) -> None:
    """A worker died under a bench job: the run says so (and is resumed if the job is requeued)."""
    run_id = (job.payload or {}).get("run_id")
    if job.kind != "bench" or not run_id:
        return
    if job.status == "queued":
        _set_run(run_id, status="queued", error="the worker running it stopped; it will resume")
    else:
        _set_run(run_id, status="failed", finished_at=utcnow(),
                 error="the worker running it stopped and no attempts are left; "
                       f"resume with: ace bench --resume {run_id}")


def _roles(cfg: BenchConfig) -> Roles:
    if cfg.workflow == "review":
        from core.episodes.review import ReviewRoles

        return ReviewRoles.from_settings()
    return Roles.from_settings()


def run_bench_job(job: Job) -> dict[str, Any]:
    """The `bench` job kind: run or resume the run named in the payload."""
    run_id = job.payload["run_id"]
    summary = run_bench(run_id, job_id=job.id)
    run = get_run(run_id)
    if run.status == "cancelled":
        raise jobs.Cancelled()
    if run.status != "done":
        raise RuntimeError(run.error or f"benchmark run {run_id} ended {run.status}")
    return {"run_id": run_id, "test": summary.get("test")}


# ------------------------------------------------------------------ results


def results(run_id: str, include_running: bool = False) -> list[BenchResult]:
    with read_session() as s:
        stmt = select(BenchResult).where(BenchResult.run_id == run_id)
        rows = list(s.exec(stmt.order_by(BenchResult.id)))  # type: ignore[arg-type]
    return rows if include_running else [r for r in rows if r.error != RUNNING]


def _stats(rows: list[BenchResult]) -> dict[str, Any]:
    n = len(rows)
    passed = sum(r.success for r in rows)

    def mean(attr: str) -> Optional[float]:
        return sum(getattr(r, attr) for r in rows) / n if n else None

    return {"tasks": n, "passed": passed, "pass_rate": passed / n if n else None,
            "errors": sum(r.error is not None for r in rows), "tokens": sum(r.tokens for r in rows),
            "cost": sum(r.cost for r in rows), "tokens_per_task": mean("tokens"), "cost_per_task": mean("cost"),
            "duration_ms_per_task": mean("duration_ms"), "llm_ms_per_task": mean("llm_ms"),
            "sandbox_ms_per_task": mean("sandbox_ms")}


def learning_curve(run_id: str) -> list[dict[str, Any]]:
    """Tidy rows for the learning-curves page: one per (arm, phase, epoch) with its pass rate.

    Baseline rows have epoch 0 (it never learns); ACE train rows are epochs
    1..N; the ACE test row has epoch N (evaluated after N epochs, frozen).
    """
    groups: dict[tuple[str, str, int], list[BenchResult]] = {}
    for r in results(run_id):
        groups.setdefault((r.arm, r.phase, r.epoch), []).append(r)
    order = {"train": 0, "test": 1}
    return [{"run_id": run_id, "arm": a, "phase": p, "epoch": e, **_stats(rows)}
            for (a, p, e), rows in sorted(groups.items(), key=lambda kv: (order.get(kv[0][1], 2), kv[0][0], kv[0][2]))]


def summarize(run_id: str) -> dict[str, Any]:
    """The figures a run is judged by; stored on the run when it ends."""
    from core.playbook.deltas import count_bullets

    run = get_run(run_id)
    cfg = BenchConfig.model_validate(run.config)
    rows = results(run_id)

    def pick(arm: str, phase: str) -> list[BenchResult]:
        return [r for r in rows if r.arm == arm and r.phase == phase]

    base, ace = _stats(pick("baseline", "test")), _stats(pick("ace", "test"))
    gain = (ace["pass_rate"] - base["pass_rate"]
            if ace["pass_rate"] is not None and base["pass_rate"] is not None else None)
    return {
        "run_id": run_id, "suite": run.suite, "epochs": cfg.epochs, "workflow": cfg.workflow,
        "train_tasks": len(cfg.train), "test_tasks": len(cfg.test),
        "test": {"baseline": base, "ace": ace, "improvement": gain},
        "train": {"baseline": _stats(pick("baseline", "train")),
                  "ace_by_epoch": [{"epoch": e, **_stats([r for r in pick("ace", "train") if r.epoch == e])}
                                   for e in range(1, cfg.epochs + 1)]},
        "per_arm": {arm: _stats([r for r in rows if r.arm == arm]) for arm in ("baseline", "ace")},
        "totals": _stats(rows),
        "playbook": {"id": run.playbook_id, "bullets": count_bullets(run.playbook_id) if run.playbook_id else 0},
    }


def bench_progress(run_id: str) -> dict[str, Any]:
    """Done/total per phase and per stage, for progress bars; cheap enough to poll."""
    run = get_run(run_id)
    cfg = BenchConfig.model_validate(run.config)
    want: dict[tuple[str, str, int], int] = {("baseline", "train", 0): len(cfg.train),
                                             ("baseline", "test", 0): len(cfg.test)}
    for e in range(1, cfg.epochs + 1):
        want[("ace", "train", e)] = len(cfg.train)
    want[("ace", "test", cfg.epochs)] = len(cfg.test)
    got: dict[tuple[str, str, int], list[int]] = {}
    running = 0
    for r in results(run_id, include_running=True):
        if r.error == RUNNING:
            running += 1
            continue
        g = got.setdefault((r.arm, r.phase, r.epoch), [0, 0])
        g[0] += 1
        g[1] += r.success
    stages = [{"arm": a, "phase": p, "epoch": e, "total": n, "done": got.get((a, p, e), [0, 0])[0],
               "passed": got.get((a, p, e), [0, 0])[1]} for (a, p, e), n in want.items() if n]
    phases = {ph: {"done": sum(s["done"] for s in stages if s["phase"] == ph),
                   "total": sum(s["total"] for s in stages if s["phase"] == ph),
                   "passed": sum(s["passed"] for s in stages if s["phase"] == ph)} for ph in ("train", "test")}
    done, total = sum(s["done"] for s in stages), sum(s["total"] for s in stages)
    return {"run_id": run_id, "suite": run.suite, "status": run.status, "error": run.error, "done": done,
            "total": total, "fraction": done / total if total else 1.0, "running": running, "phases": phases,
            "stages": stages}


def run_info(run: BenchRun) -> dict[str, Any]:
    full = run.config or {}
    cfg = {k: v for k, v in full.items() if k not in ("train", "test")}
    s = run.summary or {}
    test = s.get("test") or {}
    return {"id": run.id, "suite": run.suite, "status": run.status, "error": run.error, "config": cfg,
            "train_tasks": len(full.get("train", [])), "test_tasks": len(full.get("test", [])),
            "playbook_id": run.playbook_id, "job_id": run.job_id, "created_at": run.created_at,
            "finished_at": run.finished_at, "baseline_test_pass_rate": (test.get("baseline") or {}).get("pass_rate"),
            "ace_test_pass_rate": (test.get("ace") or {}).get("pass_rate"), "improvement": test.get("improvement")}


def list_runs(limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs, newest first, for the UI's run picker."""
    with read_session() as s:
        stmt = select(BenchRun).order_by(BenchRun.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
        runs = list(s.exec(stmt))
    return [run_info(r) for r in runs]


def _result_dict(run: BenchRun, r: BenchResult) -> dict[str, Any]:
    return {"run_id": run.id, "suite": run.suite, **{k: getattr(r, k) for k in RESULT_FIELDS}}


def export_csv(run_id: str) -> str:
    """One row per task run (arm, phase, epoch, task, success, tokens, cost, times)."""
    run = get_run(run_id)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["run_id", "suite", *RESULT_FIELDS], lineterminator="\n")
    w.writeheader()
    for r in results(run_id):
        w.writerow(_result_dict(run, r))
    return buf.getvalue()


def export_json(run_id: str) -> str:
    """The run, its summary (computed now if it has not ended), its curve and every task result."""
    run = get_run(run_id)
    data = {"run": run_info(run), "summary": run.summary or summarize(run_id), "curve": learning_curve(run_id),
            "results": [_result_dict(run, r) for r in results(run_id)]}
    return json.dumps(data, indent=2, default=str)


# ------------------------------------------------------------------ the command line


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)


def _print_progress(ev: dict[str, Any]) -> None:
    if ev["event"] == "stage":
        what = ", ".join(f"{a} {p}" + (f" epoch {e}" if a == "ace" and p == "train" else "") for a, p, e in ev["arms"])
        print(f"== stage {ev['stage']}/{ev['stages']}: {what}: {ev['todo']} of {ev['units']} tasks to run", flush=True)
        return
    pct = 100 * ev["done"] / ev["total"] if ev["total"] else 100
    verdict = "ERROR" if ev["error"] else ("pass" if ev["success"] else "FAIL")
    epoch = f"e{ev['epoch']}" if ev["arm"] == "ace" else "  "
    print(f"[{_bar(ev['done'], ev['total'])}] {ev['done']:>4}/{ev['total']} {pct:3.0f}%  {ev['arm']:<8} "
          f"{ev['phase']:<5} {epoch:<3} {ev['task_key'][:28]:<28} {verdict:<5} {ev['duration_ms'] / 1000:6.1f}s "
          f"{ev['tokens']:>6} tok" + (f"  {ev['error'][:80]}" if ev["error"] else ""), flush=True)


def _rate(st: dict[str, Any]) -> str:
    return "-" if st.get("pass_rate") is None else f"{100 * st['pass_rate']:.1f}% ({st['passed']}/{st['tasks']})"


def print_summary(s: dict[str, Any]) -> None:
    """The figures, as a short text report."""
    print(f"\nrun {s['run_id']} on {s['suite']}: {s['train_tasks']} train / {s['test_tasks']} test tasks, "
          f"{s['epochs']} epoch(s), workflow {s['workflow']}")
    print(f"  baseline on train          {_rate(s['train']['baseline'])}")
    for e in s["train"]["ace_by_epoch"]:
        print(f"  ACE train, epoch {e['epoch']:<3}      {_rate(e)}")
    t = s["test"]
    print(f"  TEST baseline (empty)      {_rate(t['baseline'])}")
    print(f"  TEST ACE (frozen playbook) {_rate(t['ace'])}"
          + (f"   {100 * t['improvement']:+.1f} points" if t["improvement"] is not None else ""))
    print("  per task:        tokens      cost     wall s    llm s  sandbox s")
    for arm, st in s["per_arm"].items():
        if st["tasks"]:
            print(f"    {arm:<12} {st['tokens_per_task']:9.0f} {st['cost_per_task']:9.5f} "
                  f"{st['duration_ms_per_task'] / 1000:10.2f} {st['llm_ms_per_task'] / 1000:8.2f} "
                  f"{st['sandbox_ms_per_task'] / 1000:10.2f}")
    print(f"  playbook {s['playbook']['id']}: {s['playbook']['bullets']} bullets")


def cli_bench(a: Any) -> int:
    """`ace bench`: run, resume, list or add suites; prints progress and the figures."""
    from core.cli.main import EXIT_ERROR, EXIT_OK, EXIT_USAGE, _fail
    from core.llm.client import LLMNotConfigured
    from core.bench.suites import add_suite, list_suites

    try:
        if getattr(a, "list", False):
            for s in list_suites():
                print(f"{s['name']:24} {s['source']:8} {s['tasks']:5} tasks  {', '.join(s['languages'])}"
                      + (f"  INVALID: {s['error']}" if s.get("error") else ""))
            return EXIT_OK
        if getattr(a, "add", None):
            if not a.suite:
                return _fail("--add NAME needs the path of a .jsonl file", EXIT_USAGE)
            info = add_suite(a.add, a.suite, replace=getattr(a, "replace", False))
            print(f"added suite {info['name']}: {info['tasks']} tasks ({', '.join(info['languages'])}) "
                  f"-> {info['path']}")
            return EXIT_OK
        _require_llm()
        if a.resume:
            run_id = a.resume
            get_run(run_id)
        elif not a.suite:
            return _fail("name a suite (ace bench --list shows them) or --resume RUN_ID", EXIT_USAGE)
        else:
            opts = {k: getattr(a, k) for k in ("max_iterations", "backend", "workflow", "seed", "playbook_id")
                    if getattr(a, k, None) is not None}
            run_id = create_run(a.suite, a.epochs, parse_split(a.split), a.limit, a.concurrency, **opts)
    except LLMNotConfigured as exc:
        return _fail(str(exc), EXIT_ERROR)
    except (SuiteError, ValueError, KeyError) as exc:
        return _fail(str(exc).strip("'\""), EXIT_USAGE)
    run = get_run(run_id)
    cfg = BenchConfig.model_validate(run.config)
    print(f"benchmark run {run_id}: suite {run.suite}, {len(cfg.train)} train / {len(cfg.test)} test tasks, "
          f"{cfg.epochs} epoch(s), concurrency {cfg.concurrency}; resume with: ace bench --resume {run_id}", flush=True)
    try:
        summary = run_bench(run_id, on_progress=_print_progress)
    except LLMNotConfigured as exc:
        _set_run(run_id, status="failed", error=str(exc), finished_at=utcnow())
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished tasks are kept. Resume with: ace bench --resume {run_id}", file=sys.stderr)
        return 130
    print_summary(summary)
    for path, fn in ((getattr(a, "csv", None), export_csv), (getattr(a, "json", None), export_json)):
        if path:
            with open(path, "w") as f:
                f.write(fn(run_id))
            print(f"wrote {path}")
    run = get_run(run_id)
    if run.status != "done":
        return _fail(f"run {run.status}: {run.error}", EXIT_ERROR)
    return EXIT_OK
