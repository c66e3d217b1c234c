"""`ace`: run episodes, workers, the service, benchmarks and playbook chores from a shell.

Exit codes: 0 success, 1 the task failed its tests, 2 bad usage or input,
3 the episode could not run (no model configured, sandbox unavailable, ...)
(see `core.cli.exits`). `ace playbook` and `ace bench` live in their own modules.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

from core.cli.bench import add_bench_arguments, cmd_bench
from core.cli.exits import EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail
from core.cli.playbook import add_playbook_arguments, cmd_playbook
from core.cli.trace_printer import TracePrinter


def _read(path: Optional[str]) -> Optional[str]:
    """A file argument's text (- reads stdin); a missing file is a usage error, not a traceback."""
    if path is None:
        return None
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise SystemExit(fail(f"no such file: {path}", EXIT_USAGE))
    return p.read_text()


# -------------------------------------------------------------------- commands


def cmd_run(a: argparse.Namespace) -> int:
    """One episode in this process, its trace printed live; the exit code says whether its tests passed."""
    from pydantic import ValidationError

    from core.episodes.loop import TaskSpec, run_episode

    try:
        spec = TaskSpec(task=a.task, language=a.language, tests=_read(a.tests), expected_output=_read(a.expected),
                        playbook_id=a.playbook, max_iterations=a.max_iterations, review_mode=a.review,
                        mode="sandbox_only" if a.code else "llm", code=_read(a.code), backend=a.backend, k=a.k)
    except ValidationError as exc:
        return fail(f"invalid task: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", EXIT_USAGE)
    result = run_episode(spec, on_event=TracePrinter())
    # the result's counts are the ones stored on the episode's row (unusable replies are attempts too)
    print(f"episode {result.episode_id}: {result.status} after {result.attempts} attempt(s)"
          + (f"; delta {result.delta_id}" if result.delta_id else "")
          + (f"; learning skipped: {result.learning_skipped}" if result.learning_skipped else ""))
    if result.status == "error":  # could not run: no model reachable, no sandbox, a crash
        return fail(result.error or "the episode could not run", EXIT_ERROR)
    return EXIT_OK if result.success else EXIT_FAILED


def cmd_worker(a: argparse.Namespace) -> int:
    """Run queued jobs until Ctrl+C or SIGTERM, so a service or the UI can hand work to this process."""
    import logging
    import signal
    import threading

    from core import worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ace worker: waiting for jobs (Ctrl+C to stop)", flush=True)
    try:
        n = worker.run(stop, max_jobs=1 if a.once else None, poll_s=a.poll)
    except KeyboardInterrupt:
        return EXIT_OK
    print(f"ace worker: ran {n} job(s)")
    return EXIT_OK


def cmd_serve(a: argparse.Namespace) -> int:
    """Start the HTTP service; it loads only when asked for, so other commands start fast."""
    from core.service.app import serve

    serve(a.host, a.port)
    return EXIT_OK


def cmd_info(a: argparse.Namespace) -> int:
    """What this install would use, secrets hidden: the first thing to check when something does not run."""
    from core.config import get_settings
    from core.sandbox import get_sandbox

    s = get_settings()
    for k, v in s.public().items():
        print(f"{k:24} {v}")
    try:
        with get_sandbox() as sb:
            print(f"{'isolation':24} {sb.isolation}")
    except Exception as exc:
        print(f"{'isolation':24} unavailable: {exc}")
    return EXIT_OK


def cmd_reembed(a: argparse.Namespace) -> int:
    """Bring stored embeddings in line with the configured model after it changes."""
    from core.retrieval.embeddings import embedder_status, reembed

    print(embedder_status())
    n = reembed(a.playbook)
    print(f"embedded {n} bullet(s)")
    return EXIT_OK


# -------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Every command in one place, in the order `ace --help` lists them."""
    p = argparse.ArgumentParser(prog="ace", description="ACE Playground: learn from real code execution.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one episode and print its trace live")
    r.add_argument("task", help="what the code should do")
    r.add_argument("--tests", help="file of assert-style tests (- for stdin)")
    r.add_argument("--expected", help="file holding the expected stdout")
    r.add_argument("--language", default="python", choices=["python", "javascript", "bash"])
    r.add_argument("--playbook", help="playbook id (default: routed by environment)")
    r.add_argument("--max-iterations", type=int, default=None, help="attempts before giving up")
    r.add_argument("--review", choices=["auto", "manual"], default=None, help="apply deltas or wait for review")
    r.add_argument("--code", help="run this file in the sandbox without an LLM")
    r.add_argument("--backend", choices=["local", "e2b"], default=None)
    r.add_argument("-k", type=int, default=None, help="bullets to retrieve")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run queued jobs (episodes, learn requests, benchmarks)")
    w.add_argument("--once", action="store_true", help="stop after one job")
    w.add_argument("--poll", type=float, default=0.5, help="seconds between queue checks")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("serve", help="start the ACE HTTP service")
    s.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to expose it (set ACE_SERVICE_TOKEN then)")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="show settings (secrets hidden) and the active sandbox isolation")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("reembed", help="compute missing or stale bullet embeddings (after changing ACE_EMBED_MODEL)")
    e.add_argument("playbook", nargs="?", default=None, help="one playbook (default: all)")
    e.set_defaults(func=cmd_reembed)

    pb = sub.add_parser("playbook", help="show, export, import, diff and restore playbooks")
    add_playbook_arguments(pb)
    pb.set_defaults(func=cmd_playbook)

    b = sub.add_parser("bench", help="benchmark whether learning helps (baseline vs playbook)")
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """The `ace` console script; returns the exit code instead of exiting, so tests can call it in process."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # no tracebacks for shell users; the message says what to do
        return fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
