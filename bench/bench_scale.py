"""Learn jobs drained by 1, 2, 4 and 8 `ace worker` processes, on PostgreSQL and on SQLite beside it
(issue: PostgreSQL). Then 4 workers on PostgreSQL, two of them killed with SIGKILL mid-run.

The model is remote, so workers mostly wait on it: the fake OpenAI-compatible server answers every call
after a fixed 300 ms (a learn job makes two calls: Reflector and Curator). Workers are idle and listening
before the jobs are queued; the wall time runs from the first job queued to the last job done. The
PostgreSQL server is a throwaway one (tests/pg_server.py) with the default max_connections of 100.
Targets: 4 workers drain at least 3.5x faster than 1 on PostgreSQL; the kill -9 run loses and duplicates
nothing (every job done, one episode per job, one delta per episode). Also reported: how long a job
queued on an idle PostgreSQL worker waits before it starts (LISTEN/NOTIFY; target under 100 ms).
Run: .venv/bin/python bench/bench_scale.py [jobs per run, default 32]
"""

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_llm import Delay, FakeLLM  # noqa: E402
from tests.pg_server import ThrowawayPostgres  # noqa: E402
from tests.scripted import add, cur, refl  # noqa: E402

CALL_S = 0.3
JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 32
WORKERS = (1, 2, 4, 8)
ACE = str(Path(sys.executable).with_name("ace"))
WORDS = ("guard validate parse cache retry batch stream index sort merge split round encode decode escape "
         "quote trim pad clamp bound check assert log trace measure profile buffer flush close open lock "
         "unlock wait notify poll schedule cancel resume retry backoff jitter limit quota budget").split()


def model(counter: list[int], lock: threading.Lock) -> Any:
    def answer(request: dict[str, Any]) -> Any:
        system = str((request.get("messages") or [{}])[0].get("content", ""))
        with lock:
            counter[0] += 1
            n = counter[0]
        if "curator" in system:  # a lesson unlike every other, so dedup never merges two jobs' bullets
            lesson = " ".join(random.Random(n).sample(WORDS, 7))
            return Delay(CALL_S, cur(add(f"Lesson {n}: {lesson}")))
        return Delay(CALL_S, refl("the agent's run taught something"))
    return answer


def env_for(url: str, fake: FakeLLM) -> dict[str, str]:
    return {**os.environ, "ACE_DB_URL": url, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "bench",
            "ACE_MODEL": "fake-model", "ACE_LLM_MAX_RETRIES": "0", "ACE_JOB_STALE_SECONDS": "4",
            "ACE_EMBEDDER": "none"}


def use(url: str, env: dict[str, str]) -> None:
    """Point this process at `url` (the queue calls below) with the workers' settings."""
    from core import config
    from core.storage import db

    os.environ.update({k: v for k, v in env.items() if k.startswith(("ACE_", "OPENAI_"))})
    config.reset_settings()
    db.dispose_engines()
    db.get_engine(url)


def start_workers(n: int, env: dict[str, str], poll: str) -> list[subprocess.Popen]:
    return [subprocess.Popen([ACE, "worker", "--poll", poll], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(n)]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def listening(url: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = 'ace-playground-listen'").fetchone()
        return int(row[0]) if row else 0


def enqueue_learn(n: int, playbook: str) -> list[str]:
    from core import jobs

    return [jobs.enqueue("learn", {"playbook_id": playbook, "user_message": f"task {i}",
                                   "trajectory": f"the agent ran task {i} and it failed on an empty list"},
                         max_attempts=3) for i in range(n)]


def wait_done(ids: list[str], timeout: float = 600) -> None:
    from sqlmodel import col, func, select

    from core.storage.db import read_session
    from core.storage.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with read_session() as s:
            left = s.exec(select(func.count()).select_from(Job).where(
                col(Job.id).in_(ids), col(Job.status).in_(("queued", "running")))).one()
        if left == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{left} jobs still open after {timeout} s")


def check(ids: list[str], playbook: str) -> dict[str, Any]:
    """Every job done; one episode per job; one delta per episode; every lesson stored once."""
    from sqlmodel import col, select

    from core import playbook as P
    from core.storage.db import read_session
    from core.storage.models import Delta, Episode, Job

    with read_session() as s:
        jobs_ = s.exec(select(Job).where(col(Job.id).in_(ids))).all()
        eps = s.exec(select(Episode).where(col(Episode.job_id).in_(ids))).all()
        deltas = s.exec(select(Delta).where(col(Delta.episode_id).in_([e.id for e in eps]))).all()
    per_job: dict[str, int] = {}
    for e in eps:
        per_job[e.job_id or ""] = per_job.get(e.job_id or "", 0) + 1
    per_ep: dict[str, int] = {}
    for d in deltas:
        per_ep[d.episode_id or ""] = per_ep.get(d.episode_id or "", 0) + 1
    return {"done": sum(j.status == "done" for j in jobs_), "jobs": len(ids),
            "retried": sum(j.attempts > 1 for j in jobs_),
            "episodes_per_job": sorted(set(per_job.values())) or [0],
            "deltas_per_episode": sorted(set(per_ep.values())) or [0],
            "bullets": len(P.active_bullets(playbook))}


def drain(kind: str, url: str, fake: FakeLLM, n_workers: int) -> dict[str, Any]:
    env = env_for(url, fake)
    use(url, env)
    playbook = f"scale-{n_workers}"
    procs = start_workers(n_workers, env, "0.5" if kind == "sqlite" else "5")
    try:
        if kind == "postgresql":
            deadline = time.monotonic() + 60
            while listening(url) < n_workers and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(1.0)  # imports done, first look at the queue taken: every worker idles
        t0 = time.perf_counter()
        ids = enqueue_learn(JOBS, playbook)
        wait_done(ids)
        wall = time.perf_counter() - t0
    finally:
        stop_workers(procs)
    return {"wall": wall, **check(ids, playbook)}


def wake_delay(url: str, fake: FakeLLM, samples: int = 15) -> list[float]:
    """Queued -> started for one idle worker polling every 30 s: the NOTIFY wake-up alone."""
    from core import jobs

    env = env_for(url, fake)
    use(url, env)
    procs = start_workers(1, env, "30")
    delays = []
    try:
        deadline = time.monotonic() + 60
        while listening(url) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        for i in range(samples):
            t0 = time.perf_counter()
            (job_id,) = enqueue_learn(1, f"wake-{i}")
            while (job := jobs.get_job(job_id)) is not None and job.status == "queued":
                time.sleep(0.002)
            delays.append((time.perf_counter() - t0) * 1000)
            wait_done([job_id])
    finally:
        stop_workers(procs)
    return delays


def killed(url: str, fake: FakeLLM) -> dict[str, Any]:
    env = env_for(url, fake)
    use(url, env)
    playbook = "scale-killed"
    procs = start_workers(4, env, "1")
    try:
        deadline = time.monotonic() + 60
        while listening(url) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        ids = enqueue_learn(JOBS, playbook)
        time.sleep(JOBS * 2 * CALL_S / 4 / 3)  # about a third of the way through
        for p in procs[:2]:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        wait_done(ids)
    finally:
        stop_workers(procs)
    return check(ids, playbook)


def main() -> int:
    import threading as _t

    counter, lock = [0], _t.Lock()
    fake = FakeLLM()
    fake.default = model(counter, lock)
    fake.start()
    pg = ThrowawayPostgres(max_connections=100).start()
    tmp = Path(tempfile.mkdtemp(prefix="ace-bench-scale-"))
    ok = True
    try:
        print(f"{JOBS} learn jobs per run, 2 model calls of {CALL_S * 1000:.0f} ms each per job "
              f"(1 worker: at least {JOBS * 2 * CALL_S:.1f} s)\n")
        print(f"{'workers':>8} | {'PostgreSQL s':>12} {'speed-up':>8} {'jobs/s':>7} | "
              f"{'SQLite s':>9} {'speed-up':>8} {'jobs/s':>7} | checks")
        base: dict[str, float] = {}
        for n in WORKERS:
            row = {}
            for kind in ("postgresql", "sqlite"):
                url = pg.new_database() if kind == "postgresql" else f"sqlite:///{tmp / f'scale-{n}.db'}"
                r = drain(kind, url, fake, n)
                base.setdefault(kind, r["wall"])
                row[kind] = r
                good = (r["done"] == r["jobs"] and r["episodes_per_job"] == [1] and r["deltas_per_episode"] == [1]
                        and r["bullets"] == r["jobs"])
                ok &= good
            pgr, sq = row["postgresql"], row["sqlite"]
            print(f"{n:>8} | {pgr['wall']:>12.2f} {base['postgresql'] / pgr['wall']:>7.2f}x "
                  f"{JOBS / pgr['wall']:>7.1f} | {sq['wall']:>9.2f} {base['sqlite'] / sq['wall']:>7.2f}x "
                  f"{JOBS / sq['wall']:>7.1f} | " + ("ok" if ok else f"FAILED pg={pgr} sqlite={sq}"), flush=True)
            if n == 4:
                speedup = base["postgresql"] / pgr["wall"]
                print(f"{'':>8}   4 workers on PostgreSQL: {speedup:.2f}x faster than 1 (target >= 3.5x)"
                      + ("" if speedup >= 3.5 else "  MISSED"), flush=True)
        delays = wake_delay(pg.new_database(), fake)
        print(f"\nidle worker (poll 30 s), queued -> running: median {statistics.median(delays):.1f} ms, "
              f"max {max(delays):.1f} ms over {len(delays)} jobs (target < 100 ms)")
        k = killed(pg.new_database(), fake)
        good = (k["done"] == k["jobs"] and k["episodes_per_job"] == [1] and k["deltas_per_episode"] == [1]
                and k["bullets"] == k["jobs"])
        ok &= good
        print(f"\nkill -9 of 2 of 4 workers mid-run (PostgreSQL): {k['done']}/{k['jobs']} jobs done, "
              f"{k['retried']} retried after their worker died, episodes per job {k['episodes_per_job']}, "
              f"deltas per episode {k['deltas_per_episode']}, {k['bullets']} lessons stored "
              + ("(nothing lost, nothing doubled)" if good else "FAILED"))
    finally:
        from core.storage import db

        db.dispose_engines()
        pg.stop()
        fake.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
