"""Stopping the work in hand on purpose: one path for a cancel, shared by every wait that has a deadline.

A job runs inside `interruptible(interrupt)`. Whoever learns that the job was cancelled (the same process
at once, a database wake-up or a heartbeat from elsewhere) calls `interrupt.set()`. Every blocking wait of
the job then ends within a fraction of a second: a model call waits with `wait_until` (its reply, its
deadline or the interrupt, whichever comes first), the sandbox's output loop looks at `is_interrupted()`
between reads, and E2B's blocking call is abandoned (its sandbox killed). What was stopped
raises `Interrupted`, a BaseException like KeyboardInterrupt, so no `except Exception` on the way mistakes
a cancel for a failed attempt.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional


class Interrupted(BaseException):
    """The work was stopped on purpose (the job was cancelled)."""

    def __init__(self, reason: str = "cancelled by request"):
        super().__init__(reason)
        self.reason = reason


class Interrupt:
    """Set once, by any thread; runs its callbacks once, when set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason = "cancelled by request"

    def set(self, reason: str = "cancelled by request") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb()
            except Exception:  # one failing callback must not keep the others from stopping their work
                pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    @contextmanager
    def callback(self, fn: Callable[[], None]) -> Iterator[None]:
        """Run `fn` when this interrupt is set while the block runs (at once if it already is)."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._callbacks.append(fn)
        if already:
            fn()
        try:
            yield
        finally:
            with self._lock:
                if fn in self._callbacks:
                    self._callbacks.remove(fn)


_current: ContextVar[Optional[Interrupt]] = ContextVar("ace_interrupt", default=None)


@contextmanager
def interruptible(interrupt: Interrupt) -> Iterator[Interrupt]:
    """Run the block (and what it calls in this thread) under `interrupt`."""
    token = _current.set(interrupt)
    try:
        yield interrupt
    finally:
        _current.reset(token)


def current() -> Optional[Interrupt]:
    return _current.get()


def is_interrupted() -> bool:
    found = _current.get()
    return found is not None and found.is_set()


def check() -> None:
    """Raise `Interrupted` when the current work was interrupted."""
    found = _current.get()
    if found is not None and found.is_set():
        raise Interrupted(found.reason)


def wait_until(ready: threading.Event, timeout: float) -> bool:
    """Wait for `ready` at most `timeout` seconds: True when it was set, False at the deadline; raises
    `Interrupted` as soon as the current work is interrupted. The one wait for a reply, a deadline and a
    cancel."""
    found = _current.get()
    if found is None:
        return ready.wait(max(0.0, timeout))
    with found.callback(ready.set):
        ready.wait(max(0.0, timeout))
    if found.is_set():
        raise Interrupted(found.reason)
    return ready.is_set()


def sleep(seconds: float) -> None:
    """`time.sleep` that a cancel cuts short (raising `Interrupted`): backoffs between retries."""
    found = _current.get()
    if found is None:
        threading.Event().wait(max(0.0, seconds))
        return
    if found.wait(max(0.0, seconds)):
        raise Interrupted(found.reason)
