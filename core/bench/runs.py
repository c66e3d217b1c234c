"""Benchmark runs as records: create, queue, resume, cancel, look up and list them.

The UI and the CLI start runs here; `core.bench.runner` does the work.
"""

from typing import Any, Optional

from sqlmodel import select

from core import jobs
from core.bench.config import BenchConfig, split_tasks
from core.bench.suites import load_suite
from core.config import get_settings
from core.storage.db import fetch, read_session, row_writer, write_session
from core.storage.models import BenchRun


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
    if s.source != "package":
        chosen = set(cfg.train) | set(cfg.test)
        cfg.tasks = [t for t in s.tasks if t.id in chosen]
    run = BenchRun(suite=s.name, config={})
    if playbook_id is not None:
        from core.playbook import validate_playbook_id

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
    require_llm()
    run_id = create_run(suite, epochs, split, limit, concurrency, **options)
    _queue(run_id)
    return run_id


def require_llm() -> None:
    """Fail before recording a run that could not run a single task."""
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
    """The run, or `Missing` (a KeyError) with a message fit to show a user."""
    return fetch(BenchRun, run_id, "benchmark run")


def set_run(run_id: str, **values: Any) -> None:
    """Update the run's columns in one short transaction; a deleted run is left alone."""
    with write_session() as s:
        run = s.get(BenchRun, run_id)
        if run is not None:
            for k, v in values.items():
                setattr(run, k, v)
            s.add(run)


def run_info(run: BenchRun) -> dict[str, Any]:
    """A run as the run picker shows it: its config without the task lists, and its headline figures."""
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
