"""A run's figures, read back from its result rows: stats, learning curve, summary, progress, exports.

Rows are keyed (run, arm, phase, epoch, task); a row whose error is RUNNING is
claimed but not finished, so every figure here leaves it out.
"""

import csv
import io
import json
from typing import Any, Optional

from sqlmodel import select

from core.bench.config import BenchConfig
from core.bench.runs import get_run, run_info
from core.storage.db import read_session
from core.storage.models import BenchResult, BenchRun

RUNNING = "(running)"  # BenchResult.error while its task is under way; resume finishes or reruns it
RESULT_FIELDS = ("arm", "phase", "epoch", "task_key", "success", "attempts", "tokens", "cost", "duration_ms",
                 "llm_ms", "sandbox_ms", "episode_id", "error")


def results(run_id: str, include_running: bool = False) -> list[BenchResult]:
    """The run's rows in the order they were claimed; unfinished ones only when asked for."""
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
    from core.playbook import count_bullets

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
    stages: list[dict[str, Any]] = [
        {"arm": a, "phase": p, "epoch": e, "total": n, "done": got.get((a, p, e), [0, 0])[0],
         "passed": got.get((a, p, e), [0, 0])[1]} for (a, p, e), n in want.items() if n]
    phases = {ph: {"done": sum(s["done"] for s in stages if s["phase"] == ph),
                   "total": sum(s["total"] for s in stages if s["phase"] == ph),
                   "passed": sum(s["passed"] for s in stages if s["phase"] == ph)} for ph in ("train", "test")}
    done, total = sum(s["done"] for s in stages), sum(s["total"] for s in stages)
    return {"run_id": run_id, "suite": run.suite, "status": run.status, "error": run.error, "done": done,
            "total": total, "fraction": done / total if total else 1.0, "running": running, "phases": phases,
            "stages": stages}


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
