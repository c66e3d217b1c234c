"""An episode's trace, printed live as `ace run` receives it: one line per event, program output indented.

The events come straight from the loop, before the database sees them: everything printed passes
`core.redaction.sanitize` here (secrets redacted, NUL and lone surrogates replaced)."""

import re
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
    ReviewPayload,
    RoutePayload,
    TraceEvent,
)
from core.redaction import sanitize


def _print_lines(text: str, stream: Any) -> None:
    for line in sanitize(text).splitlines():
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
        print(sanitize(f"[{kind}{att}]{ms}{_detail(kind, p)}"), flush=True)


def _unusable(p: Any) -> str:
    """Why a role's reply could not be used (a model's words may be in it: control characters go), and
    what the failed calls still cost."""
    why = _CONTROL.sub("?", str(p.get("error")))
    return (f" reply unusable: {why}; {p.get('prompt_tokens', 0)}+{p.get('completion_tokens', 0)} tokens"
            + (f"; raw reply: {_clip(p['response'], 200)!r}" if p.get("response") else ""))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _invented(p: Any) -> str:
    n = p.get("invented_ids") or 0
    return f" ({n} invented id(s) dropped)" if n else ""


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _detail(kind: str, p: dict[str, Any]) -> str:
    """What an event's one line says after its kind, read through the kind's payload type."""
    if kind == "route":
        r = cast(RoutePayload, p)
        return f" {r.get('reason', '')}; review: {r.get('review_mode', '-')}; backend: {r.get('backend', '-')}"
    if kind in ("generate", "optimize"):
        g = cast(GeneratePayload, p)
        if g.get("error"):
            return _unusable(g) + "; no code ran"
        return (f" {g.get('prompt_tokens', 0)}+{g.get('completion_tokens', 0)} tokens; bullets used: "
                f"{', '.join(g.get('bullet_ids') or []) or 'none'}{_invented(g)}")
    if kind == "review":
        rv = cast(ReviewPayload, p)
        if rv.get("error"):
            return _unusable(rv)
        return f" needs optimization: {rv.get('needs_optimization')}" + ("; forced" if rv.get("forced") else "")
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
        rf = cast(ReflectPayload, p)
        if rf.get("error"):
            return _unusable(rf)
        return f" key insight: {(rf.get('reflection') or {}).get('key_insight', '')}{_invented(rf)}"
    if kind == "curate":
        c = cast(CuratePayload, p)
        if c.get("error"):
            return _unusable(c)
        ops = (c.get("curation") or {}).get("operations") or []
        dropped = c.get("dropped") or []
        return (f" {len(ops)} operations" + (f", {len(dropped)} dropped" if dropped else "")
                + "".join(f"\n    {o['type']} {o.get('bullet_id') or ''} {(o.get('content') or '')[:100]}"
                          for o in ops)
                + "".join(f"\n    dropped: {_op_name(d.get('op'))}: {d.get('reason')}" for d in dropped[:10]))
    if kind == "apply":
        a = cast(ApplyPayload, p)
        status = a.get("status")
        if status == "skipped":
            return f" learning skipped: {a.get('reason')}"
        if status == "empty" or not a.get("operations"):
            return " nothing to apply" + (f" ({a.get('dropped')} operation(s) dropped)" if a.get("dropped") else "")
        if status == "pending":
            return f" delta {a.get('delta_id')} waits for review ({a.get('operations')} operation(s))"
        version = f" -> version {a['version']}" if a.get("version") else ""
        return f" {status} delta {a.get('delta_id')}{version}"
    if kind == "error":
        return f" {cast(ErrorPayload, p).get('message')}"
    return ""


def _op_name(op: Any) -> str:
    if not isinstance(op, dict):
        return _clip(str(op), 60)
    ids = " ".join(str(i) for i in [op.get("bullet_id"), *(op.get("bullet_ids") or [])] if i)
    return _clip(f"{op.get('type', '?')} {ids}".strip(), 60)
