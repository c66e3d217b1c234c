"""Wake-ups from the database: PostgreSQL's LISTEN/NOTIFY, one listening connection per process.

Triggers (migration 0004) notify `ace_jobs` when a job becomes queued and `ace_cancel` (with the job id)
when someone asks to cancel a running job (for a running job to wait on, next to its deadlines). A worker
idles on a `Waiter` instead of polling the queue, so a queued episode starts at once on an idle worker on
any host. SQLite has no such channel: there a waiter
only times out, and callers poll as before.

After the connection drops (the server restarted) the listener reconnects and wakes every waiter once:
a notification sent while it was away is lost, so waiters look for themselves.
"""

import logging
import threading
from typing import Optional

from sqlalchemy.engine import Engine

log = logging.getLogger("ace.wakeups")

JOBS = "ace_jobs"
CANCEL = "ace_cancel"
CHANNELS = (JOBS, CANCEL)


class Waiter:
    """Set when a notification on its channel (and payload, if given) arrives."""

    def __init__(self, listener: Optional["Listener"], channel: str, payload: Optional[str] = None):
        self.channel, self.payload = channel, payload
        self.event = threading.Event()
        self._listener = listener

    def wait(self, timeout: float) -> bool:
        """Block until notified or `timeout` passes; True when notified. The wake-up is consumed."""
        woke = self.event.wait(timeout)
        if woke:  # after a timeout, leave a wake-up that lands just now for the next wait
            self.event.clear()
        return woke

    def clear(self) -> None:
        self.event.clear()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.remove(self)


class Listener:
    """A thread holding one autocommit connection that LISTENs on every channel and sets waiters."""

    def __init__(self, conninfo: str, name: str):
        self.conninfo, self.name = conninfo, name
        self._waiters: list[Waiter] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ace-listen-{name}", daemon=True)
        self._thread.start()

    def add(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.append(waiter)

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self, channel: Optional[str], payload: Optional[str]) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for w in waiters:
            if channel is None or (w.channel == channel and (w.payload is None or w.payload == payload)):
                w.event.set()

    def _run(self) -> None:
        import psycopg

        backoff = 0.2
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                                     application_name="ace-playground-listen") as conn:
                    for ch in CHANNELS:
                        conn.execute(f"LISTEN {ch}")  # constants, not input
                    if not first:
                        self._wake(None, None)  # notifications sent while away are lost: everyone looks
                    first, backoff = False, 0.2
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            self._wake(n.channel, n.payload)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("listening for database wake-ups failed (%s); reconnecting in %.1f s",
                            type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


_listeners: dict[str, Listener] = {}
_lock = threading.Lock()


def _conninfo(engine: Engine) -> str:
    """libpq's URI for the engine's database (psycopg takes it as is)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def waiter(engine: Engine, channel: str, payload: Optional[str] = None) -> Waiter:
    """A waiter on `channel` of this engine's database; on SQLite one that is never notified."""
    if engine.dialect.name != "postgresql":
        return Waiter(None, channel, payload)
    key = str(engine.url)
    with _lock:
        listener = _listeners.get(key)
        if listener is None:
            listener = _listeners[key] = Listener(_conninfo(engine), engine.url.database or "db")
    w = Waiter(listener, channel, payload)
    listener.add(w)
    return w


def stop_listeners() -> None:
    """Close every listening connection (engines being disposed; tests)."""
    with _lock:
        listeners = list(_listeners.values())
        _listeners.clear()
    for listener in listeners:
        listener.stop()
