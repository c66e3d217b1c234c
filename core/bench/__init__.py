"""Benchmark suites and runs: baseline against ACE on the same tasks.

`config` fixes what a run does, `runs` records and queues runs, `runner` runs
them, `results` reads their figures back, `suites` loads the tasks. Printing
them in a terminal is the CLI's job (`core.cli.bench`).
"""

from core.bench.config import BenchConfig, parse_split, split_tasks
from core.bench.results import (
    RESULT_FIELDS,
    RUNNING,
    bench_progress,
    export_csv,
    export_json,
    learning_curve,
    results,
    summarize,
)
from core.bench.runner import Progress, Unit, baseline_playbook, mark_job_interrupted, run_bench, run_bench_job
from core.bench.runs import (
    cancel_bench,
    create_run,
    get_run,
    list_runs,
    require_llm,
    resume_bench,
    run_info,
    set_run,
    start_bench,
)

__all__ = [
    "BenchConfig", "parse_split", "split_tasks",
    "cancel_bench", "create_run", "get_run", "list_runs", "require_llm", "resume_bench", "run_info", "set_run",
    "start_bench",
    "Progress", "Unit", "baseline_playbook", "mark_job_interrupted", "run_bench", "run_bench_job",
    "RESULT_FIELDS", "RUNNING", "bench_progress", "export_csv", "export_json", "learning_curve", "results",
    "summarize",
]
