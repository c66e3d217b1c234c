"""`ace`: run episodes, workers, the service, benchmarks and playbook chores from a shell.

Exit codes: 0 success, 1 the task failed its tests, 2 bad usage or input (one line on
stderr, whatever the input: see `core.cli.inputs`), 3 the episode could not run (no model
configured, sandbox unavailable, ...) (see `core.cli.exits`), 141 the reader of the output
went away. `ace playbook` and `ace bench` live in their own modules.
"""

import argparse
import sys
from typing import Optional

from core.cli.bench import add_bench_arguments, cmd_bench
from core.cli.exits import EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail
from core.cli.inputs import BadInput, Parser, check_arguments, count, one_line, port, positive_int, read_text, seconds
from core.cli.playbook import add_playbook_arguments, cmd_playbook, existing_playbook, playbook_id
from core.cli.trace_printer import TracePrinter
from core.errors import Invalid, NotFound
from core.redaction import sanitize

# -------------------------------------------------------------------- commands


def cmd_run(a: argparse.Namespace) -> int:
    """One episode in this process, its trace printed live; the exit code says whether its tests passed."""
    from pydantic import ValidationError

    from core.episodes.loop import TaskSpec, run_episode

    tests, expected = read_text(a.tests, "--tests"), read_text(a.expected, "--expected")
    code = read_text(a.code, "--code")
    try:
        spec = TaskSpec(task=a.task, language=a.language, tests=tests, expected_output=expected,
                        playbook_id=playbook_id(a.playbook), max_iterations=a.max_iterations, review_mode=a.review,
                        mode="sandbox_only" if a.code else "llm", code=code, backend=a.backend, k=a.k)
    except ValidationError as exc:
        return fail(f"invalid task: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", EXIT_USAGE)
    result = run_episode(spec, on_event=TracePrinter())
    # the result's counts are the ones stored on the episode's row (unusable replies are attempts too)
    print(sanitize(f"episode {result.episode_id}: {result.status} after {result.attempts} attempt(s)"
                   + (f"; delta {result.delta_id}" if result.delta_id else "")
                   + (f"; learning skipped: {result.learning_skipped}" if result.learning_skipped else "")))
    if result.status == "error":  # could not run: no model reachable, no sandbox, a crash
        return fail(result.error or "the episode could not run", EXIT_ERROR)
    return EXIT_OK if result.success else EXIT_FAILED


def cmd_worker(a: argparse.Namespace) -> int:
    """Run queued jobs until Ctrl+C or SIGTERM, so a service or the UI can hand work to this process."""
    import logging
    import signal
    import threading

    from core import worker
    from core.config import get_settings
    from core.storage.db import shown_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ace worker: waiting for jobs in {shown_url(get_settings().db_url)} (Ctrl+C to stop)", flush=True)
    try:
        n = worker.run(stop, max_jobs=1 if a.once else None, poll_s=a.poll)
    except KeyboardInterrupt:
        return EXIT_OK
    print(f"ace worker: ran {n} job(s)")
    return EXIT_OK


def cmd_serve(a: argparse.Namespace) -> int:
    """Start the HTTP service; it loads only when asked for, so other commands start fast."""
    import socket

    try:  # a host that names no address is bad input, found before the server starts
        socket.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BadInput(f"--host {a.host!r}: {getattr(exc, 'strerror', None) or exc}") from None
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

    if a.playbook is not None:
        existing_playbook(a.playbook)
    print(embedder_status())
    n = reembed(a.playbook)
    print(f"embedded {n} bullet(s)")
    return EXIT_OK


# -------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Every command in one place, in the order `ace --help` lists them."""
    p = Parser(prog="ace", description="ACE Playground: learn from real code execution.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run one episode and print its trace live")
    r.add_argument("task", help="what the code should do")
    r.add_argument("--tests", help="file of assert-style tests (- for stdin)")
    r.add_argument("--expected", help="file holding the expected stdout")
    r.add_argument("--language", default="python", choices=["python", "javascript", "bash"])
    r.add_argument("--playbook", help="playbook id (default: routed by environment)")
    r.add_argument("--max-iterations", type=positive_int, default=None, help="attempts before giving up")
    r.add_argument("--review", choices=["auto", "manual"], default=None, help="apply deltas or wait for review")
    r.add_argument("--code", help="run this file in the sandbox without an LLM")
    r.add_argument("--backend", choices=["local", "e2b"], default=None)
    r.add_argument("-k", type=count, default=None, help="bullets to retrieve")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run queued jobs (episodes, learn requests, benchmarks)")
    w.add_argument("--once", action="store_true", help="stop after one job")
    w.add_argument("--poll", type=seconds, default=None,
                   help="seconds between queue checks when idle (default 0.5 on SQLite; 5 on PostgreSQL, "
                        "where a queued job wakes the worker at once)")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("serve", help="start the ACE HTTP service")
    s.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to expose it (set ACE_SERVICE_TOKEN then)")
    s.add_argument("--port", type=port, default=8000)
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


EXIT_BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        pass


def main(argv: Optional[list[str]] = None) -> int:
    """The `ace` console script; returns the exit code instead of exiting, so tests can call it in process.

    Bad input of any kind (arguments, files, ids, nesting) exits 2 with one line on stderr; 3 is kept
    for work that could not run.
    """
    from core.redaction import install_logging

    install_logging()  # every command's log lines (worker, serve) are redacted
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`ace playbook show p | head`): stop quietly, as shell tools do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except BadInput as exc:
        return fail(one_line(str(exc)), EXIT_USAGE)
    except (Invalid, NotFound) as exc:  # the product says the input is wrong, or names nothing that exists
        return fail(one_line(str(exc)), EXIT_USAGE)
    except RecursionError:  # only input nested past what Python's parsers take gets here
        return fail("the input nests too deep to read", EXIT_USAGE)
    except Exception as exc:  # no tracebacks for shell users; the message says what to do
        return fail(one_line(f"{type(exc).__name__}: {exc}"), EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
