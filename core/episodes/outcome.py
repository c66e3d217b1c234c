"""How every workflow ends an episode that was cancelled or failed, so its trace and its row agree."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.episodes.events import ErrorPayload
from core.episodes.spec import EpisodeResult
from core.episodes.store import update_episode
from core.episodes.trace import StepError, Trace
from core.interrupts import Interrupted
from core.jobs import TAKEN_OVER
from core.storage.models import utcnow


def zero_totals() -> dict[str, float]:
    """An episode's running totals: tokens, model time, sandbox time and cost, failed calls included."""
    return {"tokens": 0, "llm_ms": 0.0, "sandbox_ms": 0.0, "cost": 0.0}


def stored_totals(t: dict[str, float]) -> dict[str, Any]:
    """The totals as the episode row stores them."""
    return {"tokens": int(t.get("tokens", 0)), "llm_ms": t.get("llm_ms", 0.0), "sandbox_ms": t.get("sandbox_ms", 0.0),
            "cost": t.get("cost", 0.0)}


@dataclass
class Progress:
    """Where a running episode is (the step a failure is blamed on), how many attempts it has made
    (unusable replies included) and what it has spent so far."""

    step: str = "setup"
    totals: dict[str, float] = field(default_factory=zero_totals)
    attempts: int = 0
    out_of_time: bool = False  # the episode's time budget ran out: no new attempt, no learning

    def spent(self) -> dict[str, Any]:
        """The totals as the episode row stores them."""
        return stored_totals(self.totals)


@contextmanager
def recorded_ending(trace: Trace, result: EpisodeResult, progress: Progress) -> Iterator[None]:
    """Record a cancel (and re-raise it, so the job ends cancelled) or any other failure (which ends the
    episode with status `error`): an episode never raises for the task's faults."""
    try:
        yield
    except Interrupted as exc:
        if exc.reason == TAKEN_OVER:  # another worker runs this episode now: its record is theirs to write
            raise
        trace.emit("error", ErrorPayload(step=progress.step, message="cancelled by request"))
        result.status, result.error, result.attempts = "cancelled", "cancelled by request", progress.attempts
        update_episode(result.episode_id, status="cancelled", error=result.error, finished_at=utcnow(),
                       attempts=progress.attempts, **progress.spent())
        raise
    except Exception as exc:  # any step: record it clearly and end the episode
        step, cause = (exc.step, exc.cause) if isinstance(exc, StepError) else (progress.step, exc)
        message = f"{step} failed: {cause}"
        trace.emit("error", ErrorPayload(step=step, message=message, type=type(cause).__name__))
        result.status, result.error, result.attempts = "error", message, progress.attempts
        update_episode(result.episode_id, status="error", error=message, finished_at=utcnow(),
                       attempts=progress.attempts, **progress.spent())
