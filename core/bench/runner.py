"""Running a benchmark run: does learning help, and does it generalize?

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

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from core import jobs
from core.bench.config import BenchConfig
from core.bench.results import RUNNING, results, summarize
from core.bench.runs import get_run, set_run
from core.bench.suites import Suite, SuiteError, SuiteTask, load_suite
from core.episodes.spec import Roles, TaskSpec
from core.episodes.store import learned_delta, new_episode
from core.interrupts import Interrupted
from core.loop import run_episode
from core.storage.db import query_row, read_session, row_writer
from core.storage.models import BenchResult, BenchRun, Episode, Job, LLMCall, utcnow

Progress = Callable[[dict[str, Any]], None]


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


def baseline_playbook(run: BenchRun) -> str:
    """The baseline arm learns nothing, so it gets a playbook of its own that stays empty."""
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
            span = s.connection().execute(select(
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
    except Interrupted:  # cancelled: between steps, or inside a model call or a program
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
    stages = _units(cfg, Suite(cfg.suite, cfg.tasks, "run") if cfg.tasks else load_suite(cfg.suite))
    if roles is None:
        roles = _roles(cfg)
    if sandbox_factory is None:
        from core.sandbox import get_sandbox

        def sandbox_factory() -> Any:
            return get_sandbox(cfg.backend)

    done, left = _existing(run_id)
    ctx = _Ctx(run, cfg, roles, sandbox_factory, job_id, on_progress,
               total=sum(len(st) for st in stages), done=len(done), left=left)
    set_run(run_id, status="running", error=None, finished_at=None, job_id=job_id or run.job_id)
    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix=f"bench-{run_id[-6:]}")
    interrupted = False
    try:
        for n, stage in enumerate(stages, 1):
            todo = [u for u in stage if u.key not in done]
            ctx.emit({"event": "stage", "stage": n, "stages": len(stages), "units": len(stage), "todo": len(todo),
                      "arms": sorted({(u.arm, u.phase, u.epoch) for u in stage}), "done": ctx.done, "total": ctx.total})
            # each task in a copy of this context: a cancel interrupts its model call or program too
            futures: set[Future[Any]] = {pool.submit(contextvars.copy_context().run, _run_unit, ctx, u) for u in todo}
            while futures:
                finished, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()  # a bug in the runner itself surfaces here
            if ctx.stop.is_set():
                break
    except BaseException as exc:
        ctx.stop.set()
        interrupted = isinstance(exc, KeyboardInterrupt)  # do not wait for running tasks: resume reruns them
        set_run(run_id, status="cancelled" if interrupted else "failed", finished_at=utcnow(),
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
        set_run(run_id, status="cancelled", summary=summary, finished_at=utcnow(), error="cancelled by request")
    elif ctx.failure:
        set_run(run_id, status="failed", summary=summary, finished_at=utcnow(), error=ctx.failure)
    else:
        set_run(run_id, status="done", summary=summary, finished_at=utcnow(), error=None)
    return summary


def mark_job_interrupted(job: Job) -> None:
    """A worker died under a bench job: the run says so (and is resumed if the job is requeued)."""
    run_id = (job.payload or {}).get("run_id")
    if job.kind != "bench" or not run_id:
        return
    if job.status == "queued":
        set_run(run_id, status="queued", error="the worker running it stopped; it will resume")
    else:
        set_run(run_id, status="failed", finished_at=utcnow(),
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
