"""How much does the benchmark runner itself cost per task, beside the sandbox?

Runs the real runner (`core.bench.runner.run_bench`: episodes, traces, result rows,
resume bookkeeping) over the 164 HumanEval tasks with canned code: a
hand-written Generator returns each problem's canonical solution, and the
Reflector and Curator return empty answers, with no HTTP and no model. The
tasks run in the real sandbox. Overhead = wall - sandbox - llm, per task; the
suite's whole non-LLM overhead should stay below the sandbox's own time.

    .venv/bin/python bench/bench_runner.py [--concurrency N] [--limit N]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _result(value: Any) -> Any:
    from core.llm.client import LLMResult

    return LLMResult(value, raw="", prompt_tokens=0, completion_tokens=0, latency_ms=0.0, call_ids=[], mode="canned",
                     messages=[])


class CannedGenerator:
    """Returns the reference solution of the task it is asked about; records the calls."""

    def __init__(self, solutions: dict[str, str]):
        self.solutions, self.calls = solutions, 0

    def generate(self, task: str, language: str, playbook_text: str, previous: list[Any],
                 episode_id: Optional[str] = None) -> Any:
        from core.roles import GeneratorOutput

        self.calls += 1
        return _result(GeneratorOutput(code=self.solutions[task], language=language))


class SilentReflector:
    def reflect(self, *args: Any, **kwargs: Any) -> Any:
        from core.roles import ReflectorOutput

        return _result(ReflectorOutput(key_insight="canned"))


class SilentCurator:
    def curate(self, *args: Any, **kwargs: Any) -> Any:
        from core.roles import CuratorOutput

        return _result(CuratorOutput())


def measure(concurrency: int, limit: Optional[int]) -> dict[str, float]:
    from core import bench
    from core.bench.suites import humaneval_tasks
    from core.loop import Roles

    tasks = humaneval_tasks()[:limit]
    gen = CannedGenerator({t.task: t.solution or "" for t in tasks})
    roles = Roles(gen, SilentReflector(), SilentCurator())
    run_id = bench.create_run("humaneval", epochs=1, split=0.5, limit=limit, concurrency=concurrency)
    t0 = time.perf_counter()
    summary = bench.run_bench(run_id, roles=roles)
    wall = (time.perf_counter() - t0) * 1000
    rows = bench.results(run_id)
    n = len(rows)
    sandbox = sum(r.sandbox_ms for r in rows)
    llm = sum(r.llm_ms for r in rows)
    task_wall = sum(r.duration_ms for r in rows)
    failed = [f"{r.arm}/{r.phase}/{r.task_key}" for r in rows if not r.success]
    return {"concurrency": concurrency, "tasks": n, "wall_ms": wall, "task_wall_ms": task_wall,
            "sandbox_ms": sandbox, "llm_ms": llm, "overhead_ms": task_wall - sandbox - llm,
            "runner_ms": wall * concurrency - task_wall, "passed": summary["totals"]["passed"],
            "failed": len(failed), "failed_ids": failed[:10], "generator_calls": gen.calls}


def report(m: dict[str, Any]) -> None:
    n, c = m["tasks"] or 1, m["concurrency"]
    whole = m["wall_ms"] - m["sandbox_ms"] - m["llm_ms"] if c == 1 else m["overhead_ms"]
    print(f"\nconcurrency {c}: {m['tasks']} task runs (baseline 164 + ACE train 82 + ACE test 82 at full size), "
          f"{m['passed']} passed, {m['failed']} failed {m['failed_ids'] or ''}")
    print(f"  {'':44} {'total s':>9} {'per task ms':>12}")
    lines = [("wall (whole run)", m["wall_ms"]), ("sandbox (sum over tasks)", m["sandbox_ms"]),
             ("llm (sum over tasks)", m["llm_ms"])]
    if c == 1:
        lines += [("overhead = wall - sandbox - llm", whole),
                  ("  inside episodes (trace, episode rows)", m["overhead_ms"]),
                  ("  runner bookkeeping between episodes", whole - m["overhead_ms"])]
    else:
        lines += [("overhead = task wall - sandbox - llm (summed)", whole),
                  ("speed-up vs. the summed task time", None)]
    for label, v in lines:
        if v is None:
            print(f"  {label:<44} {m['task_wall_ms'] / m['wall_ms']:9.2f}x")
        else:
            print(f"  {label:<44} {v / 1000:9.2f} {v / n:12.1f}")
    ok = whole < m["sandbox_ms"]
    print(f"  overhead / sandbox = {whole / max(m['sandbox_ms'], 1e-9):.2f}  "
          f"-> {'OK: below the sandbox time' if ok else 'TOO HIGH: above the sandbox time'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 2])
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="ace-bench-runner-")
    os.environ["ACE_DB_URL"] = f"sqlite:///{tmp}/bench.db"
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("OPENAI_BASE_URL", None)
    ok = True
    for c in a.concurrency:
        m = measure(c, a.limit)
        report(m)
        whole = m["wall_ms"] - m["sandbox_ms"] - m["llm_ms"] if c == 1 else m["overhead_ms"]
        ok = ok and whole < m["sandbox_ms"] and m["failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
