"""Run the easy tasks of tasks.json as episodes through the `ace run` CLI against a real local model.

Each episode runs as `python -m core.cli run TASK --tests FILE` in a subprocess (its trace goes to a log
file); the exit code is printed as it ends, and at the end a table read from the database, the model
calls' speed and the count of each exit code. Settings come from the environment, as for the app
(OPENAI_BASE_URL, OPENAI_API_KEY, ACE_MODEL), except the database: ACE_DB_URL is set to a throwaway
one in a fresh temporary folder (or to --db-url), never the project's own.

    python tools/real_model/episodes.py -n 3 --start-server   # `make real-model-episodes N=3` does this
"""

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXIT_MEANING = {0: "passed", 1: "tests failed", 2: "bad usage", 3: "could not run", 130: "interrupted"}


def models_url() -> str:
    return os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8088/v1").rstrip("/") + "/models"


def answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(workdir: Path) -> "subprocess.Popen[bytes]":
    """`node serve.mjs` in the background on OPENAI_BASE_URL's port, once it answers GET /v1/models."""
    url = models_url()
    if answering(url):
        raise SystemExit(f"something already answers {url}: stop it or run without --start-server")
    port = urlparse(url).port or 8088
    log = workdir / "server.log"
    proc = subprocess.Popen(["node", "serve.mjs"], cwd=HERE, env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    deadline = time.monotonic() + 120
    while not answering(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"the model server did not start; its log:\n{log.read_text()}")
        time.sleep(0.3)
    print(f"model server up at {url} (pid {proc.pid}, log {log})", flush=True)
    return proc


def stop_server(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sqlite_path(db_url: str) -> Optional[Path]:
    return Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None


def table(rows: list[list[object]], head: list[str]) -> str:
    cells = [head] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def summary(db: Path, ids: set[str]) -> None:
    con = sqlite3.connect(db)
    eps = con.execute("SELECT id, status, success, attempts, tokens, llm_ms, error FROM episode "
                      "ORDER BY created_at").fetchall()
    eps = [e for e in eps if e[0] in ids] or eps
    print(table([[e[0], e[1], e[2], e[3], e[4], f"{e[5]:.0f}", (e[6] or "").replace("\n", " ")[:100]] for e in eps],
                ["episode", "status", "success", "attempts", "tokens", "llm_ms", "error"]))
    calls = con.execute("SELECT role, mode, latency_ms, completion_tokens, error FROM llmcall").fetchall()
    if not calls:
        return
    ok = [c for c in calls if c[4] is None]
    ms = sum(c[2] for c in ok)
    toks = sum(c[3] for c in ok)
    print(f"\nmodel calls: {len(calls)} ({len(calls) - len(ok)} with an error); answered: {len(ok)}, "
          f"{ms / 1000 / max(len(ok), 1):.1f} s per call, {toks / max(len(ok), 1):.0f} completion tokens per call, "
          f"{toks / (ms / 1000) if ms else 0:.1f} tokens/s")
    by = Counter((c[0], c[1], "error" if c[4] else "ok") for c in calls)
    print("calls by role/mode: " + ", ".join(f"{r}/{m}/{s}={n}" for (r, m, s), n in sorted(by.items())))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10, help="episodes to run (tasks cycle when n exceeds them)")
    p.add_argument("--tasks", default=str(HERE / "tasks.json"))
    p.add_argument("--start-server", action="store_true", help="start serve.mjs for the run and stop it after")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one episode's CLI run may take")
    p.add_argument("--db-url", help="database to use (default: a throwaway one in the work folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each episode's live trace too")
    a = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ace-real-model-"))
    # Always set here, so an ACE_DB_URL in the shell or in .env never sends these runs to a real database.
    os.environ["ACE_DB_URL"] = a.db_url or f"sqlite:///{workdir / 'real.db'}"
    db = sqlite_path(os.environ["ACE_DB_URL"])
    tasks = json.loads(Path(a.tasks).read_text())
    print(f"work folder {workdir}; database {os.environ['ACE_DB_URL']}; model {os.environ.get('ACE_MODEL', '?')} "
          f"at {os.environ.get('OPENAI_BASE_URL', '?')}", flush=True)

    server = start_server(workdir) if a.start_server else None
    codes: Counter[int] = Counter()
    ids: set[str] = set()
    t_all = time.monotonic()
    try:
        for i in range(a.n):
            t = tasks[i % len(tasks)]
            tests = workdir / f"{i + 1:02d}-{t['id']}.tests.py"
            tests.write_text(t["tests"])
            log = workdir / f"{i + 1:02d}-{t['id']}.log"
            cmd = [sys.executable, "-m", "core.cli", "run", t["task"], "--tests", str(tests)]
            t0 = time.monotonic()
            with log.open("w") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert proc.stdout is not None
                try:
                    for line in proc.stdout:
                        out.write(line)
                        if a.verbose:
                            print("    " + line, end="", flush=True)
                    rc = proc.wait(timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
            lines = [x for x in log.read_text().splitlines() if x.strip()]
            last = next((x for x in reversed(lines) if x.startswith("episode ")), lines[-1] if lines else "")
            ids.update(w.rstrip(":") for w in last.split()[1:2])
            codes[rc] += 1
            print(f"[{i + 1}/{a.n}] {t['id']:10} exit {rc} ({EXIT_MEANING.get(rc, '?')}) "
                  f"in {time.monotonic() - t0:.0f} s | {last[:160]}", flush=True)
    finally:
        if server is not None:
            stop_server(server)
            print(f"model server stopped (log {workdir / 'server.log'})")

    print(f"\n{a.n} episode(s) in {time.monotonic() - t_all:.0f} s\n")
    if db is not None and db.is_file():
        summary(db, ids)
    print("\nexit codes: " + ", ".join(f"{c} ({EXIT_MEANING.get(c, '?')}) x{n}" for c, n in sorted(codes.items())))
    print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
