"""An episode's trace, printed live as `ace run` receives it: one line per event, program output indented."""

import sys
from typing import Any, Optional, cast

from core.episodes.events import (
    ApplyPayload,
    CuratePayload,
    ErrorPayload,
    EvaluatePayload,
    ExecutePayload,
    GeneratePayload,
    OutputPayload,
    ReflectPayload,
    RoutePayload,
    TraceEvent,
)


def _print_lines(text: str, stream: Any) -> None:
    for line in text.splitlines():
        print(f"    | {line}", file=stream)


class TracePrinter:
    """The loop's `on_event` callback for a terminal, one per episode: readable, and flushed so a slow
    episode shows progress. It remembers which attempts streamed their output, so it is not printed twice."""

    def __init__(self) -> None:
        self.streamed: set[Optional[int]] = set()

    def __call__(self, ev: TraceEvent) -> None:
        kind, p = ev["kind"], ev["payload"]
        att = f" #{ev['attempt']}" if ev.get("attempt") else ""
        ms = f" ({ev['duration_ms']:.0f} ms)" if ev.get("duration_ms") is not None else ""
        if kind == "output":
            out = cast(OutputPayload, p)
            self.streamed.add(ev.get("attempt"))
            _print_lines(out.get("text", ""), sys.stdout if out.get("stream") == "stdout" else sys.stderr)
            return
        if kind == "execute" and ev.get("attempt") not in self.streamed:  # a short run: its output comes with it
            logs = (cast(ExecutePayload, p).get("execution") or {}).get("logs") or {}
            _print_lines("".join(logs.get("stdout") or []), sys.stdout)
            _print_lines("".join(logs.get("stderr") or []), sys.stderr)
        print(f"[{kind}{att}]{ms}{_detail(kind, p)}", flush=True)


def _detail(kind: str, p: dict[str, Any]) -> str:
    """What an event's one line says after its kind, read through the kind's payload type."""
    if kind == "route":
        r = cast(RoutePayload, p)
        return f" {r.get('reason', '')}; review: {r.get('review_mode', '-')}; backend: {r.get('backend', '-')}"
    if kind == "generate":
        g = cast(GeneratePayload, p)
        return (f" {g.get('prompt_tokens', 0)}+{g.get('completion_tokens', 0)} tokens; bullets used: "
                f"{', '.join(g.get('bullet_ids') or []) or 'none'}")
    if kind == "execute":
        x = cast(ExecutePayload, p)
        ex = x.get("execution") or {}
        err = ex.get("error")
        return (f" exit {ex.get('exit_code')}" + (f"; {err['name']}: {err['value']}" if err else "")
                + ("; TIMED OUT" if ex.get("timed_out") else "") + f"; isolation: {x.get('isolation', '?')}")
    if kind == "evaluate":
        v = cast(EvaluatePayload, p)
        failed = v.get("failed") or []
        return (f" {'PASSED' if v.get('passed') else 'FAILED'} {v.get('total', 0) - len(failed)}/{v.get('total', 0)}"
                + "".join(f"\n    - {f}" for f in failed[:10]))
    if kind == "reflect":
        return f" key insight: {(cast(ReflectPayload, p).get('reflection') or {}).get('key_insight', '')}"
    if kind == "curate":
        ops = (cast(CuratePayload, p).get("curation") or {}).get("operations") or []
        return f" {len(ops)} operations" + "".join(
            f"\n    {o['type']} {o.get('bullet_id') or ''} {(o.get('content') or '')[:100]}" for o in ops)
    if kind == "apply":
        a = cast(ApplyPayload, p)
        version = f" -> version {a['version']}" if a.get("version") else ""
        return f" {a.get('status')} delta {a.get('delta_id')}{version}"
    if kind == "error":
        return f" {cast(ErrorPayload, p).get('message')}"
    return ""
