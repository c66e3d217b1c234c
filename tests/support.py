"""Plain helpers shared by the tests (the shared fixtures are in conftest.py)."""

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition not met") -> T:
    """Call `predicate` until it returns something truthy and return that.

    Fails the test (AssertionError) after `timeout` seconds with `message` (a string, or a callable
    evaluated at failure time) and the predicate's last value. An exception the predicate raises
    propagates at once: that is how a predicate says waiting longer is pointless (a child exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s; last value: {value!r})")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
