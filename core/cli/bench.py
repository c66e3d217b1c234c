"""`ace bench`: run, resume, list or add suites from a shell, with live progress and the figures at the end.

The benchmark itself lives in `core.bench`; this module only parses and prints.
"""

import argparse
import sys
from typing import Any

from core.cli.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail
from core.cli.inputs import BadInput, count, one_line, positive_int, writable
from core.cli.playbook import playbook_id


def add_bench_arguments(b: argparse.ArgumentParser) -> None:
    """The options, kept beside the code that reads them."""
    b.add_argument("suite", nargs="?", help="humaneval, a suite name (--list), or a .jsonl file")
    b.add_argument("--epochs", type=count, default=1, help="passes over the train split while learning")
    b.add_argument("--split", default="0.5", help="train fraction: 0.5, 50%% or 60/40 (the rest is the test split)")
    b.add_argument("--limit", type=positive_int, default=None, help="use only the first N tasks")
    b.add_argument("--concurrency", type=positive_int, default=2, help="tasks run at once (one sandbox each)")
    b.add_argument("--resume", metavar="RUN_ID", help="finish a stopped run; finished tasks are skipped")
    b.add_argument("--max-iterations", type=positive_int, default=None, help="attempts per task (default 1: pass@1)")
    b.add_argument("--workflow", choices=["single", "review"], default=None,
                   help="review: generator, reviewer and optimizer, each with its own playbook")
    b.add_argument("--playbook", dest="playbook_id", default=None, help="learn into this playbook (default: a new one)")
    b.add_argument("--backend", choices=["local", "e2b"], default=None)
    b.add_argument("--seed", type=int, default=None, help="seed of the train/test split")
    b.add_argument("--csv", metavar="FILE", help="write the per-task results as CSV when done")
    b.add_argument("--json", metavar="FILE", help="write the run, summary and results as JSON when done")
    b.add_argument("--list", action="store_true", help="list the suites and exit")
    b.add_argument("--add", metavar="NAME", help="validate the .jsonl file and store it as suite NAME, then exit")
    b.add_argument("--replace", action="store_true", help="with --add: overwrite a suite of that name")


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


def _check_config(a: argparse.Namespace, split: float, opts: dict[str, Any]) -> None:
    """The run's settings within their bounds (epochs, concurrency, ...), before anything is recorded."""
    from pydantic import ValidationError

    from core.bench import BenchConfig

    fields = {k: v for k, v in opts.items() if k != "playbook_id"}
    try:
        BenchConfig(suite=a.suite, epochs=a.epochs, split=split, limit=a.limit, concurrency=a.concurrency, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def cmd_bench(a: argparse.Namespace) -> int:
    """Run, resume, list or add suites; the benchmark code loads only when this command runs."""
    from core.bench import (
        BenchConfig,
        create_run,
        export_csv,
        export_json,
        get_run,
        parse_split,
        require_llm,
        run_bench,
        set_run,
    )
    from core.bench.suites import SuiteError, add_suite, list_suites, load_suite
    from core.llm.client import LLMNotConfigured
    from core.storage.models import utcnow

    try:
        if getattr(a, "list", False):
            for s in list_suites():
                print(f"{s['name']:24} {s['source']:8} {s['tasks']:5} tasks  {', '.join(s['languages'])}"
                      + (f"  INVALID: {s['error']}" if s.get("error") else ""))
            return EXIT_OK
        if getattr(a, "add", None):
            if not a.suite:
                return fail("--add NAME needs the path of a .jsonl file", EXIT_USAGE)
            info = add_suite(a.add, a.suite, replace=getattr(a, "replace", False))
            print(f"added suite {info['name']}: {info['tasks']} tasks ({', '.join(info['languages'])}) "
                  f"-> {info['path']}")
            return EXIT_OK
        # every input is checked before asking for a model: bad input is exit 2 with or without one
        for path, what in ((getattr(a, "csv", None), "--csv"), (getattr(a, "json", None), "--json")):
            writable(path, what)
        if a.resume:
            run_id = a.resume
            get_run(run_id)
            require_llm()
        elif not a.suite:
            return fail("name a suite (ace bench --list shows them) or --resume RUN_ID", EXIT_USAGE)
        else:
            split = parse_split(a.split)
            playbook_id(getattr(a, "playbook_id", None))
            load_suite(a.suite)
            opts = {k: getattr(a, k) for k in ("max_iterations", "backend", "workflow", "seed", "playbook_id")
                    if getattr(a, k, None) is not None}
            _check_config(a, split, opts)
            require_llm()
            run_id = create_run(a.suite, a.epochs, split, a.limit, a.concurrency, **opts)
    except LLMNotConfigured as exc:
        return fail(str(exc), EXIT_ERROR)
    except (SuiteError, ValueError, KeyError) as exc:
        return fail(one_line(str(exc).strip("'\"")), EXIT_USAGE)
    run = get_run(run_id)
    cfg = BenchConfig.model_validate(run.config)
    print(f"benchmark run {run_id}: suite {run.suite}, {len(cfg.train)} train / {len(cfg.test)} test tasks, "
          f"{cfg.epochs} epoch(s), concurrency {cfg.concurrency}; resume with: ace bench --resume {run_id}", flush=True)
    try:
        summary = run_bench(run_id, on_progress=_print_progress)
    except LLMNotConfigured as exc:
        set_run(run_id, status="failed", error=str(exc), finished_at=utcnow())
        return fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished tasks are kept. Resume with: ace bench --resume {run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(summary)
    for path, fn in ((getattr(a, "csv", None), export_csv), (getattr(a, "json", None), export_json)):
        if path:
            with open(path, "w") as f:
                f.write(fn(run_id))
            print(f"wrote {path}")
    run = get_run(run_id)
    if run.status != "done":
        return fail(f"run {run.status}: {run.error}", EXIT_ERROR)
    return EXIT_OK
