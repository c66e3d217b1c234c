"""`ace`: run episodes, workers, the service, benchmarks and playbook chores from a shell.

Exit codes: 0 success, 1 the task failed its tests, 2 bad usage or input,
3 the episode could not run (no model configured, sandbox unavailable, ...).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def _read(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise SystemExit(_fail(f"no such file: {path}", EXIT_USAGE))
    return p.read_text()


def _fail(message: str, code: int) -> int:
    print(f"ace: {message}", file=sys.stderr)
    return code


_streamed: set[Any] = set()  # attempts whose output was already printed live


def _print_lines(text: str, stream: Any) -> None:
    for line in text.splitlines():
        print(f"    | {line}", file=stream)


def _print_event(ev: dict[str, Any]) -> None:
    kind, p = ev["kind"], ev["payload"]
    att = f" #{ev['attempt']}" if ev.get("attempt") else ""
    ms = f" ({ev['duration_ms']:.0f} ms)" if ev.get("duration_ms") is not None else ""
    if kind == "output":
        _streamed.add(ev.get("attempt"))
        _print_lines(p["text"], sys.stdout if p["stream"] == "stdout" else sys.stderr)
        return
    if kind == "execute" and ev.get("attempt") not in _streamed:  # a short run: its output comes with it
        logs = (p.get("execution") or {}).get("logs") or {}
        _print_lines("".join(logs.get("stdout") or []), sys.stdout)
        _print_lines("".join(logs.get("stderr") or []), sys.stderr)
    line = f"[{kind}{att}]{ms}"
    if kind == "route":
        line += f" {p.get('reason', '')}; review: {p.get('review_mode', '-')}; backend: {p.get('backend', '-')}"
    elif kind == "generate":
        line += f" {p.get('prompt_tokens', 0)}+{p.get('completion_tokens', 0)} tokens; bullets used: " \
                f"{', '.join(p.get('bullet_ids') or []) or 'none'}"
    elif kind == "execute":
        ex = p.get("execution") or {}
        err = ex.get("error")
        line += f" exit {ex.get('exit_code')}" + (f"; {err['name']}: {err['value']}" if err else "") + \
                ("; TIMED OUT" if ex.get("timed_out") else "") + f"; isolation: {p.get('isolation', '?')}"
    elif kind == "evaluate":
        line += f" {'PASSED' if p.get('passed') else 'FAILED'} {p.get('total', 0) - len(p.get('failed') or [])}" \
                f"/{p.get('total', 0)}" + "".join(f"\n    - {f}" for f in (p.get("failed") or [])[:10])
    elif kind == "reflect":
        line += f" key insight: {(p.get('reflection') or {}).get('key_insight', '')}"
    elif kind == "curate":
        ops = (p.get("curation") or {}).get("operations") or []
        line += f" {len(ops)} operations" + "".join(
            f"\n    {o['type']} {o.get('bullet_id') or ''} {(o.get('content') or '')[:100]}" for o in ops)
    elif kind == "apply":
        line += f" {p.get('status')} delta {p.get('delta_id')}" + (f" -> version {p['version']}" if p.get("version") else "")
    elif kind == "error":
        line += f" {p.get('message')}"
    print(line, flush=True)


# -------------------------------------------------------------------- commands


def cmd_run(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from core.episodes.loop import TaskSpec, run_episode

    try:
        spec = TaskSpec(task=a.task, language=a.language, tests=_read(a.tests), expected_output=_read(a.expected),
                        playbook_id=a.playbook, max_iterations=a.max_iterations, review_mode=a.review,
                        mode="sandbox_only" if a.code else "llm", code=_read(a.code), backend=a.backend, k=a.k)
    except ValidationError as exc:
        return _fail(f"invalid task: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", EXIT_USAGE)
    result = run_episode(spec, on_event=_print_event)
    print(f"episode {result.episode_id}: {result.status} after {result.attempts} attempt(s)"
          + (f"; delta {result.delta_id}" if result.delta_id else ""))
    if result.status == "error":
        return _fail(result.error or "the episode could not run", EXIT_ERROR)
    return EXIT_OK if result.success else EXIT_FAILED


def cmd_worker(a: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from core.jobs.queue import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ace worker: waiting for jobs (Ctrl+C to stop)", flush=True)
    try:
        n = run_worker(stop, max_jobs=1 if a.once else None, poll_s=a.poll)
    except KeyboardInterrupt:
        return EXIT_OK
    print(f"ace worker: ran {n} job(s)")
    return EXIT_OK


def cmd_serve(a: argparse.Namespace) -> int:
    from core.service.app import serve

    serve(a.host, a.port)
    return EXIT_OK


def cmd_info(a: argparse.Namespace) -> int:
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
    from core.retrieval.embeddings import embedder_status, reembed

    print(embedder_status())
    n = reembed(a.playbook)
    print(f"embedded {n} bullet(s)")
    return EXIT_OK


def cmd_playbook(a: argparse.Namespace) -> int:
    from core.playbook import deltas as P
    from core.playbook import portability as X
    from core.playbook import versions as V
    from core.playbook.ops import DeltaError

    try:
        if a.pb_cmd == "list":
            for pb in P.list_playbooks():
                print(f"{pb.id:24} v{pb.current_version:<5} {P.count_bullets(pb.id):6} bullets  {pb.name}")
        elif a.pb_cmd == "show":
            if P.get_playbook(a.id) is None:
                return _fail(f"playbook {a.id!r} does not exist", EXIT_USAGE)
            print(P.render(P.get_playbook(a.id), P.active_bullets(a.id)))
        elif a.pb_cmd == "export":
            text = X.export_json(a.id) if a.format == "json" else X.export_markdown(a.id)
            if a.output:
                Path(a.output).write_text(text)
                print(f"wrote {a.output}")
            else:
                print(text)
        elif a.pb_cmd == "import":
            data = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
            n, v = X.import_playbook(a.id, data, replace=a.replace, actor="cli")
            print(f"imported {n} bullets into {a.id}: version {v}")
        elif a.pb_cmd == "versions":
            for v in V.list_versions(a.id):
                print(f"v{v.number:<5} {v.created_at:%Y-%m-%d %H:%M}  {v.bullet_count:6} bullets  {v.summary}")
        elif a.pb_cmd == "diff":
            d = V.diff_versions(a.id, a.a, a.b)
            for x in d.added:
                print(f"+ [{x.bullet_id}] {x.content}")
            for x in d.removed:
                print(f"- [{x.bullet_id}] {x.content}")
            for before, after in d.changed:
                print(f"~ [{after.bullet_id}] {before.content}\n    -> {after.content}"
                      f"  (helpful {before.helpful}->{after.helpful}, harmful {before.harmful}->{after.harmful})")
            if d.empty:
                print("no differences")
        elif a.pb_cmd == "restore":
            print(f"restored version {a.version} as version {V.restore_version(a.id, a.version, actor='cli')}")
    except (DeltaError, KeyError, ValueError, OSError) as exc:
        return _fail(str(exc).strip("'\""), EXIT_USAGE)
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    from core.bench.runner import cli_bench

    return cli_bench(a)


# -------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
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
    pbs = pb.add_subparsers(dest="pb_cmd", required=True)
    pbs.add_parser("list", help="all playbooks")
    x = pbs.add_parser("show", help="the playbook as the Generator sees it")
    x.add_argument("id")
    x = pbs.add_parser("export", help="lossless JSON or readable Markdown")
    x.add_argument("id")
    x.add_argument("--format", choices=["json", "markdown"], default="json")
    x.add_argument("-o", "--output")
    x = pbs.add_parser("import", help="our JSON, Markdown, ace-agent text or kayba skillbook JSON")
    x.add_argument("id")
    x.add_argument("file", help="path, or - for stdin")
    x.add_argument("--replace", action="store_true", help="remove the current bullets first")
    x = pbs.add_parser("versions", help="the version history")
    x.add_argument("id")
    x = pbs.add_parser("diff", help="differences between two versions")
    x.add_argument("id")
    x.add_argument("a", type=int)
    x.add_argument("b", type=int)
    x = pbs.add_parser("restore", help="make an old version current (as a new version)")
    x.add_argument("id")
    x.add_argument("version", type=int)
    pb.set_defaults(func=cmd_playbook)

    b = sub.add_parser("bench", help="benchmark whether learning helps (baseline vs playbook)")
    b.add_argument("suite", nargs="?", help="humaneval, a suite name (--list), or a .jsonl file")
    b.add_argument("--epochs", type=int, default=1, help="passes over the train split while learning")
    b.add_argument("--split", default="0.5", help="train fraction: 0.5, 50%% or 60/40 (the rest is the test split)")
    b.add_argument("--limit", type=int, default=None, help="use only the first N tasks")
    b.add_argument("--concurrency", type=int, default=2, help="tasks run at once (one sandbox each)")
    b.add_argument("--resume", metavar="RUN_ID", help="finish a stopped run; finished tasks are skipped")
    b.add_argument("--max-iterations", type=int, default=None, help="attempts per task (default 1: pass@1)")
    b.add_argument("--workflow", choices=["single", "review"], default=None,
                   help="review: generator, reviewer and optimizer, each with its own playbook")
    b.add_argument("--playbook", dest="playbook_id", default=None, help="learn into this playbook (default: a new one)")
    b.add_argument("--backend", choices=["local", "e2b"], default=None)
    b.add_argument("--seed", type=int, default=None, help="seed of the train/test split")
    b.add_argument("--csv", metavar="FILE", help="write the per-task results as CSV when done")
    b.add_argument("--json", metavar="FILE", help="write the run, summary and results as JSON when done")
    b.add_argument("--list", action="store_true", help="list the suites and exit")
    b.add_argument("--add", metavar="NAME", help="validate the .jsonl file and store it as suite NAME, then exit")
    b.add_argument("--replace", action="store_true", help="with --add: overwrite a suite of that name")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no tracebacks for shell users; the message says what to do
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
