"""The episode's time budget, seen by every model call made inside it.

A context variable rather than a parameter: the roles are protocols other code implements, and the
budget must bound the calls they make without each of them passing it along.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

_ends_at: ContextVar[Optional[float]] = ContextVar("ace_episode_deadline", default=None)


@contextmanager
def episode_budget(seconds: Optional[float]) -> Iterator[None]:
    """Bound every model call in the block by `seconds` from now (None or <= 0: no bound)."""
    if not seconds or seconds <= 0:
        yield
        return
    token = _ends_at.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _ends_at.reset(token)


def budget_left() -> Optional[float]:
    """Seconds left of the current episode's budget; None outside an episode."""
    ends = _ends_at.get()
    return None if ends is None else ends - time.monotonic()
