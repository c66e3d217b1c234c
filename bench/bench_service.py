"""Service benchmark: embed_prompt on a 10,000-bullet playbook over loopback, beside /health.

    .venv/bin/python bench/bench_service.py [--bullets 10000] [--requests 3000] [--concurrency 8] [--workers 1]

Seeds a fresh SQLite file (one import, so no dedup cost) with the 125 real
bullets of data/retrieval_pairs.jsonl plus synthetic ones (Zipf-distributed
words, like real text), queries with that file's real task texts, starts `ace serve`'s
own `core.service.app.serve` in a child process on 127.0.0.1, and drives it from
this process with keep-alive connections on a thread pool (stdlib http.client:
the lightest client Python has, because on a 2-core machine the load generator
competes with the server for CPU). Reports requests/s and p50/p90/p99 latency
for /health (the floor: routing and HTTP only) and embed_prompt at k=20, first
one request at a time (pure latency) and then with `--concurrency` clients,
and the server's CPU time per request ("srv cpu", ms, from /proc): on a shared
machine requests/s moves with whatever else runs, the CPU a request costs much less.
Target from issue 7: >= 500 requests/s and p99 <= 50 ms for embed_prompt.
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import stop_process  # noqa: E402

PAIRS = ROOT / "data" / "retrieval_pairs.jsonl"


def load_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def vocabulary(pairs: list[dict[str, str]], extra: int = 4000) -> list[str]:
    """Real words from the shipped bullets and tasks, then rarer made-up terms (a long tail, as real text has)."""
    real = list(dict.fromkeys(w for p in pairs
                              for w in re.findall(r"[a-z][a-z0-9_]+", (p["bullet"] + " " + p["task"]).lower())))
    rng = random.Random(3)
    tail = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3)) for _ in range(extra)]
    return real + tail


def seed(db_url: str, playbook_id: str, n: int, pairs: list[dict[str, str]]) -> tuple[float, int]:
    """The 125 real bullets plus synthetic ones whose words follow a Zipf law over the vocabulary."""
    os.environ["ACE_DB_URL"] = db_url
    from core.playbook import portability

    rng = random.Random(7)
    vocab = vocabulary(pairs)
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    items: list[dict[str, object]] = [{"section": p.get("section") or "strategies", "content": p["bullet"]}
                                      for p in pairs[:n]]
    while len(items) < n:
        words = rng.choices(vocab, weights, k=rng.randint(10, 24))
        items.append({"section": rng.choice(["strategies", "pitfalls", "snippets"]),
                      "content": " ".join(words).capitalize() + ".", "helpful": rng.randint(0, 5),
                      "harmful": rng.randint(0, 2)})
    doc = {"format": portability.FORMAT_TAG, "playbook": {"id": playbook_id, "name": "bench"},
           "bullets": [{"id": f"b-{i:05d}", **it} for i, it in enumerate(items, 1)]}
    t = time.perf_counter()
    portability.import_playbook(playbook_id, json.dumps(doc))
    return time.perf_counter() - t, len(vocab)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db_url: str, port: int, workers: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACE_SERVICE_TOKEN")}
    env.update(ACE_DB_URL=db_url, ACE_WORKER_IN_APP="0")
    code = f"from core.service.app import serve; serve('127.0.0.1', {port}, workers={workers})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                c.close()
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("server did not start")


class Load:
    """n requests from `concurrency` keep-alive connections; per-request latency in ms."""

    def __init__(self, port: int, method: str, path: str, bodies: Optional[list[bytes]] = None):
        self.port, self.method, self.path, self.bodies = port, method, path, bodies

    def _worker(self, count: int, offset: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        out = []
        for i in range(count):
            body = self.bodies[(offset + i) % len(self.bodies)] if self.bodies else None
            t = time.perf_counter()
            conn.request(self.method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out.append((time.perf_counter() - t) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"{self.path} -> {resp.status}: {data[:200]!r}")
        conn.close()
        return out

    def run(self, n: int, concurrency: int) -> dict[str, float]:
        per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            parts = list(pool.map(self._worker, per, [i * 1000 for i in range(concurrency)]))
        wall = time.perf_counter() - t
        lat = sorted(x for p in parts for x in p)
        q = statistics.quantiles(lat, n=100, method="inclusive")
        return {"requests": len(lat), "rps": len(lat) / wall, "p50": q[49], "p90": q[89], "p99": q[98],
                "max": lat[-1]}


def server_cpu(pid: int) -> Optional[float]:
    """CPU seconds used so far by the server process and its children (uvicorn workers); None off Linux."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0.0, False
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(name) == pid or int(fields[1]) == pid:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def measure(load: "Load", n: int, concurrency: int, pid: int) -> dict[str, float]:
    """load.run plus the server's CPU time per request (which other load on the machine barely changes)."""
    before = server_cpu(pid)
    r = load.run(n, concurrency)
    after = server_cpu(pid)
    r["cpu_ms"] = 1000 * (after - before) / r["requests"] if before is not None and after is not None else float("nan")
    return r


def row(name: str, conc: int, r: dict[str, float]) -> str:
    return (f"{name:<24}{conc:>5}{r['requests']:>9}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p90']:>9.2f}"
            f"{r['p99']:>9.2f}{r['max']:>9.2f}{r.get('cpu_ms', float('nan')):>10.2f}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bullets", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--k", type=int, default=20)
    a = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="ace-bench-service-")
    db_url = f"sqlite:///{Path(tmp.name) / 'ace.db'}"
    pairs = load_pairs()
    took, nvocab = seed(db_url, "bench", a.bullets, pairs)
    print(f"seeded {a.bullets:,} bullets ({len(pairs)} real, the rest Zipf over {nvocab:,} words) in {took:.1f} s; "
          f"cpus={os.cpu_count()} workers={a.workers}")
    port = free_port()
    proc = start_server(db_url, port, a.workers)
    try:
        prompts = [json.dumps({"prompt": p["task"], "k": a.k}).encode() for p in pairs]  # real task texts
        health = Load(port, "GET", "/health")
        embed = Load(port, "POST", "/playbooks/bench/embed_prompt", prompts)
        sample = embed._worker(1, 0)  # warm caches and check the answer has k bullets
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/playbooks/bench/embed_prompt", body=prompts[0],
                     headers={"Content-Type": "application/json"})
        shown = json.loads(conn.getresponse().read())["prompt"].count("helpful=")
        conn.close()
        health.run(300, a.concurrency)
        embed.run(300, a.concurrency)
        print(f"embed_prompt returns {shown} bullets at k={a.k} (first call {sample[0]:.1f} ms)\n")
        print(f"{'endpoint':<24}{'conc':>5}{'reqs':>9}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'srv cpu':>10}")
        seq = min(a.requests, 1000)
        results = {}
        for name, load in (("GET /health", health), (f"embed_prompt k={a.k}", embed)):
            print(row(name, 1, measure(load, seq, 1, proc.pid)), flush=True)
            results[name] = measure(load, a.requests, a.concurrency, proc.pid)
            print(row(name, a.concurrency, results[name]), flush=True)
        r = results[f"embed_prompt k={a.k}"]
        ok = r["rps"] >= 500 and r["p99"] <= 50
        print(f"\ntarget (>= 500 req/s and p99 <= 50 ms at concurrency {a.concurrency}): "
              f"{'met' if ok else 'NOT met'} ({r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms)")
    finally:
        stop_process(proc)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
