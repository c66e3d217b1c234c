"""The trace: every step of an episode written as it happens, so a viewer in another process can follow it.

Each event goes in its own short transaction, with the episode row's update and
any rows the step produced (a reflection, the step's LLM call log).
"""

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

from core.episodes.events import (
    EvaluatePayload,
    EventKind,
    EventSink,
    ExecutePayload,
    OutputPayload,
    StreamName,
    TraceEvent,
)
from core.interrupts import Interrupted
from core.llm.client import deferred_call_log
from core.sandbox.evaluate import MARKER, Verdict
from core.storage.db import row_writer
from core.storage.models import Episode, Event, utcnow


class StepError(Exception):
    """A failure inside a named step of the learning half."""

    def __init__(self, step: str, cause: Exception):
        super().__init__(str(cause))
        self.step, self.cause = step, cause


@contextmanager
def step_name(step: str) -> Iterator[None]:
    """Name the step a failure inside the block belongs to (the error event says where it happened)."""
    try:
        yield
    except (Interrupted, StepError):
        raise
    except Exception as exc:
        raise StepError(step, exc) from exc



EVENTS = Event.__table__  # type: ignore[attr-defined]
EPISODES = Episode.__table__  # type: ignore[attr-defined]


class Trace:
    """Writes events for one episode as they happen.

    `role`: the acting role of the review workflow, written into every payload; `as_role` gives a
    trace for another role that shares this one's lock, so sequence numbers stay in order.
    """

    def __init__(self, episode_id: str, sink: Optional[EventSink] = None, role: Optional[str] = None,
                 lock: Optional[threading.Lock] = None):
        self.episode_id, self.sink, self.role = episode_id, sink, role
        self._lock = lock or threading.Lock()

    def as_role(self, role: str) -> "Trace":
        return Trace(self.episode_id, self.sink, role, self._lock)

    def emit(self, kind: EventKind, payload: Mapping[str, Any], attempt: Optional[int] = None,
             duration_ms: Optional[float] = None, started_at: Any = None,
             episode: Optional[dict[str, Any]] = None, rows: Optional[list[Any]] = None) -> None:
        """Append an event; in the same transaction update the episode and add `rows`."""
        self.emit_all([{"kind": kind, "payload": payload, "attempt": attempt, "duration_ms": duration_ms,
                        "started_at": started_at}], episode, rows)

    def emit_all(self, events: list[dict[str, Any]], episode: Optional[dict[str, Any]] = None,
                 rows: Optional[list[Any]] = None) -> None:
        """Append events that happened together (kind, payload, attempt, duration_ms, started_at) in one
        transaction, with the episode update and `rows`."""
        if self.role is not None:
            events = [{**e, "payload": {**e["payload"], "role": self.role}} for e in events]
        with self._lock, row_writer() as w:
            w.lock(EPISODES, "id", self.episode_id)  # another process may append to this trace (stale recovery)
            seq = int(w.scalar("SELECT coalesce(max(seq), 0) FROM event WHERE episode_id = ?", (self.episode_id,)))
            w.insert(EVENTS, [{"episode_id": self.episode_id, "seq": seq + i, "kind": e["kind"],
                                "attempt": e.get("attempt"), "payload": e["payload"],
                                "started_at": e.get("started_at") or utcnow(), "duration_ms": e.get("duration_ms")}
                               for i, e in enumerate(events, 1)])
            w.add(rows or ())
            if episode:
                w.update(EPISODES, {"id": self.episode_id}, episode)
        if self.sink is not None:
            for e in events:
                self.sink(TraceEvent(kind=e["kind"], attempt=e.get("attempt"), duration_ms=e.get("duration_ms"),
                                     payload=e["payload"]))

    @contextmanager
    def step(self, kind: EventKind, attempt: Optional[int] = None, episode: Optional[dict[str, Any]] = None,
             rows: Optional[list[Any]] = None) -> Iterator[dict[str, Any]]:
        """Time a step; the caller fills the payload (and `episode`/`rows`, written with it at the end)."""
        payload: dict[str, Any] = {}
        started, t0 = utcnow(), time.perf_counter()
        with deferred_call_log() as calls:  # the step's LLM call log rows commit with its event
            yield payload
        self.emit(kind, payload, attempt, (time.perf_counter() - t0) * 1000, started, episode, (rows or []) + calls)


class OutputStream:
    """Batches sandbox output lines into `output` events for the live view."""

    def __init__(self, trace: Trace, attempt: int, every_s: float = 0.3, max_chars: int = 200_000):
        self.trace, self.attempt, self.every_s, self.max_chars = trace, attempt, every_s, max_chars
        self.buf: dict[StreamName, list[str]] = {"stdout": [], "stderr": []}
        self.sent = 0
        self.live = False
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def callback(self, stream: StreamName) -> Callable[[str], None]:
        def on_line(line: str) -> None:
            if MARKER in line:  # the test harness's report is not the program's output
                return
            with self.lock:
                if self.sent >= self.max_chars:
                    return
                self.buf[stream].append(line)
                self.sent += len(line)
                due = time.monotonic() - self.last >= self.every_s
            if due:
                self.live = True
                self.flush()
        return on_line

    def close(self) -> None:
        """Send the rest, unless nothing streamed yet: the execute event carries all of a short run's output."""
        if self.live:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            chunks = {k: "".join(v) for k, v in self.buf.items() if v}
            self.buf = {"stdout": [], "stderr": []}
            self.last = time.monotonic()
        for stream, text in chunks.items():
            self.trace.emit("output", OutputPayload(stream=stream, text=text), self.attempt)


def record_run(trace: Trace, n: int, code: str, language: str, verdict: Verdict, isolation: str,
               totals: dict[str, float]) -> None:
    """A run's execute and evaluate events, written together (the verdict is known as the run ends)
    with the episode's running totals."""
    trace.emit_all([
        {"kind": "execute", "attempt": n, "duration_ms": verdict.execution.duration_ms,
         "payload": ExecutePayload(code=code, language=language, isolation=isolation,
                                   execution=verdict.execution.model_dump(by_alias=True))},
        {"kind": "evaluate", "attempt": n,
         "payload": EvaluatePayload(passed=verdict.passed, total=verdict.total, failed=verdict.failed,
                                    error=verdict.error, feedback=verdict.feedback)}],
        episode={"isolation": isolation, "attempts": n, "code": code, "tokens": int(totals["tokens"]),
                 "llm_ms": totals["llm_ms"], "sandbox_ms": totals["sandbox_ms"], "cost": totals.get("cost", 0.0)})


# ----------------------------------------------------------------- episodes
