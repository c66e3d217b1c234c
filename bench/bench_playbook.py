"""Playbook core speed on a 10,000-bullet playbook, beside rendering it whole.

Targets: retrieve and embed_prompt at k=20 p50 <= 5 ms; apply_delta of 10 ops
<= 20 ms. Run: .venv/bin/python bench/bench_playbook.py
"""

import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["ACE_DB_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
os.environ.setdefault("ACE_EMBEDDER", "none")

from core import playbook as P  # noqa: E402
from core.playbook import portability  # noqa: E402

WORDS = ("cache retry parse json regex pandas index sort merge async await timeout encode utf8 path file csv numpy "
         "float round int divide zero empty list dict key value loop recursion memo thread lock queue socket http "
         "header cookie session token date time zone locale string bytes decode stream buffer").split()
N = 10_000


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(name: str, ms: list[float], target: str = "") -> None:
    ms = sorted(ms)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:44} {p50:9.2f} {p99:9.2f}   {target}")


if __name__ == "__main__":
    rnd = random.Random(1)
    bullets = [{"id": f"py-{i:05d}", "section": rnd.choice(["strategies", "pitfalls", "snippets"]),
                "content": " ".join(rnd.choices(WORDS, k=16)) + f" #{i}", "helpful": rnd.randint(0, 9),
                "harmful": rnd.randint(0, 3)} for i in range(1, N + 1)]
    t0 = time.perf_counter()
    portability.import_playbook("bench", json.dumps({"format": "ace-playground/1", "playbook": {"name": "b"},
                                                     "bullets": bullets}))
    print(f"imported {N:,} bullets in {time.perf_counter() - t0:.1f} s\n")
    queries = [" ".join(rnd.choices(WORDS, k=12)) for _ in range(200)]
    qi = iter(queries * 10)
    from core import retrieval

    t0 = time.perf_counter()
    retrieval.warm("bench")  # built once per playbook version, in memory
    print(f"built the in-memory retrieval index in {(time.perf_counter() - t0) * 1000:.0f} ms")
    active = P.active_bullets("bench")
    print(f"{'operation (10,000 bullets)':44} {'p50 ms':>9} {'p99 ms':>9}")
    row("baseline: render the whole playbook", timed(lambda: P.render(None, active), 20))
    row("retrieve k=20", timed(lambda: P.retrieve("bench", next(qi), 20), 200), "target p50 <= 5 ms")
    row("embed_prompt k=20", timed(lambda: P.embed_prompt("bench", next(qi), 20), 200), "target p50 <= 5 ms")
    n = iter(range(10**6))

    def ten_ops() -> None:
        i = next(n)
        ops = [{"type": "TAG", "bullet_id": f"py-{rnd.randint(1, N):05d}", "tag": "helpful"} for _ in range(4)]
        ops += [{"type": "UPDATE", "bullet_id": f"py-{rnd.randint(1, N):05d}", "content": f"updated text {i} {j}"}
                for j in range(3)]
        ops += [{"type": "ADD", "content": f"fresh strategy number {i}-{j} about {' '.join(rnd.choices(WORDS, k=6))}"}
                for j in range(3)]
        P.apply_delta("bench", ops)

    row("apply_delta, 10 ops (4 TAG, 3 UPDATE, 3 ADD)", timed(ten_ops, 50), "target <= 20 ms")
